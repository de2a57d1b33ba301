import Testing
import Virtio

/// The status state machine both transports share.
@Suite struct StatusWriteTests {
    let negotiation: FeatureNegotiation = {
        var negotiation = FeatureNegotiation(offered: [.version1, .eventIndex])
        negotiation.acknowledge(word: 0, select: 0)
        negotiation.acknowledge(word: 1, select: 1)  // VERSION_1
        return negotiation
    }()

    @Test func theDriverWalksTheSequence() {
        var status: DeviceStatus = []
        for (bits, activates) in [(1, false), (3, false), (11, false), (15, true)] {
            let write = StatusWrite(UInt8(bits), current: status, negotiation: negotiation)
            #expect(write.refusal == nil, "write \(bits)")
            #expect(write.status.rawValue == UInt8(bits))
            #expect(write.activates == activates)
            if bits == 11 { #expect(write.negotiated == [.version1]) }
            status = write.status
        }
    }

    @Test func bitsAreNeverCleared() {
        let write = StatusWrite(1, current: [.acknowledge, .driver], negotiation: negotiation)
        #expect(write.status == [.acknowledge, .driver])
        #expect(write.refusal?.contains("clears bits") == true)
        #expect(!write.activates)
    }

    @Test func featuresOKNeedsDriverAndValidFeatures() {
        let early = StatusWrite(9, current: [.acknowledge], negotiation: negotiation)
        #expect(early.status == [.acknowledge])
        #expect(early.negotiated == nil && early.refusal != nil)
        let withoutVersion1 = StatusWrite(11, current: [.acknowledge, .driver],
                                          negotiation: FeatureNegotiation(offered: [.version1]))
        #expect(!withoutVersion1.status.contains(.featuresOK))
        #expect(withoutVersion1.refusal?.hasPrefix("FEATURES_OK refused") == true)
    }

    @Test func theDriverCannotSetNeedsReset() {
        let write = StatusWrite(0x43, current: [.acknowledge, .driver], negotiation: negotiation)
        #expect(write.status == [.acknowledge, .driver])
        #expect(write.refusal == nil)
    }
}
