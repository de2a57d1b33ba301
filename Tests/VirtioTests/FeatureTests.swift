import Testing
import Virtio

@Suite struct FeatureTests {
    @Test func featureBitsAndStatusMatchTheSpecification() {
        #expect(VirtioFeatures.indirectDescriptors.rawValue == 1 << 28)
        #expect(VirtioFeatures.eventIndex.rawValue == 1 << 29)
        #expect(VirtioFeatures.version1.rawValue == 1 << 32)
        #expect(VirtioFeatures.accessPlatform.rawValue == 1 << 33)
        #expect(VirtioFeatures.ringPacked.rawValue == 1 << 34)
        let status: DeviceStatus = [.acknowledge, .driver, .featuresOK, .driverOK]
        #expect(status.rawValue == 15)
        #expect(DeviceStatus.deviceNeedsReset.rawValue == 64)
        #expect(DeviceStatus.failed.rawValue == 128)
        #expect(VirtioDeviceType.block.rawValue == 2 && VirtioDeviceType.vsock.rawValue == 19)
    }

    @Test func wordsSplitTheFeatureSet() throws {
        var negotiation = FeatureNegotiation(offered: [.version1, .eventIndex, VirtioFeatures(bit: 5)])
        #expect(negotiation.offeredWord(select: 0) == 1 << 29 | 1 << 5)
        #expect(negotiation.offeredWord(select: 1) == 1)
        #expect(negotiation.offeredWord(select: 2) == 0)
        negotiation.acknowledge(word: 1 << 5, select: 0)
        negotiation.acknowledge(word: 1, select: 1)
        #expect(negotiation.acknowledged == [.version1, VirtioFeatures(bit: 5)])
        #expect(negotiation.acknowledgedWord(select: 0) == 1 << 5)
        #expect(throws: Never.self) { try negotiation.validate() }
        #expect(try negotiation.validate() == [.version1, VirtioFeatures(bit: 5)])
        negotiation.reset()
        #expect(negotiation.acknowledged.isEmpty)
    }

    @Test func driverMustAckOnlyOfferedBitsAndVersion1() throws {
        var negotiation = FeatureNegotiation(offered: [.version1, .indirectDescriptors])
        negotiation.acknowledge(word: 1 << 28, select: 0)
        #expect(throws: FeatureNegotiationError.version1NotAcknowledged) { try negotiation.validate() }
        negotiation.acknowledge(word: 1 | 1 << 2, select: 1)  // VERSION_1 and RING_PACKED
        #expect(throws: FeatureNegotiationError.notOffered(.ringPacked)) { try negotiation.validate() }
        negotiation.acknowledge(word: 1, select: 1)
        negotiation.acknowledge(word: 0, select: 2)
        #expect(try negotiation.validate() == [.version1, .indirectDescriptors])
        negotiation.acknowledge(word: 8, select: 3)
        #expect(throws: FeatureNegotiationError.notOfferedWord(select: 3)) { try negotiation.validate() }
    }
}
