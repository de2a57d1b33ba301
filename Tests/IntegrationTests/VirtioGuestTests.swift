import Testing
import VMM

/// The `rng` test guest drives virtio-rng over virtio-mmio from ring 3, as a polling driver.
@Suite(.serialized) struct VirtioGuestTests {
    @Test func rngGuestGetsRandomBytes() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("rng"), rng: true))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        #expect(run.output.contains("rng: got 256 random bytes from virtio-rng (device at 0xfeb00000)"))
    }

    @Test func withoutTheDeviceTheGuestFindsNone() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("rng")))
        #expect(run.outcome == .guestExit(3))
        #expect(run.output.contains("rng: no virtio-rng device"))
    }

    /// A guest that hands the device a hostile ring breaks only that device: it reports DEVICE_NEEDS_RESET (0x40),
    /// and the VM keeps running to the guest's own exit.
    @Test(arguments: ["bad-desc-oob", "bad-desc-loop"])
    func hostileRingPutsTheDeviceIntoNeedsReset(mode: String) throws {
        let run = try boot(VMConfig(kernel: Repository.guest("rng"), cmdline: "mode=\(mode)", rng: true))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        let status = try #require(run.output.split(whereSeparator: \.isNewline).last { $0.hasPrefix("rng: device status 0x") })
        let value = try #require(UInt8(status.dropFirst("rng: device status 0x".count).prefix(2), radix: 16))
        #expect(value & 0x40 != 0, "DEVICE_NEEDS_RESET is set")
    }

    @Test func kernelCommandLineNamesTheDevice() throws {
        let machine = try Machine(config: VMConfig(kernel: Repository.guest("hello"), cmdline: "quiet -- init-arg", rng: true),
                                  console: DiscardOutput())
        #expect(machine.commandLine.hasPrefix("quiet virtio_mmio.device=512@0xfeb00000:16"))
        #expect(machine.commandLine.hasSuffix(" -- init-arg"))
    }
}
