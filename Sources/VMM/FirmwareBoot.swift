import ACPI
import Devices
import Firmware
import GuestMemory
import KVM
import Logging
import PCI

/// Firmware boot: the image mapped read-only below 4 GiB and copied into the BIOS area, fw_cfg describing the
/// machine (RAM, CPUs, boot order, SMBIOS, Tern's ACPI tables), and the PC ports firmware expects (0x92, the debug
/// console). The vCPUs keep the reset state KVM gives them: real mode at 0xF000:0xFFF0, CS base 0xFFFF0000.
struct FirmwareBoot {
    /// Owns the host memory of the read-only slot; it lives as long as the machine.
    let image: FirmwareImage
    /// Where the firmware's debug output goes, if anywhere.
    let debugLog: (any ConsoleOutput)?

    /// Pages KVM reserves for the real-mode TSS and identity map, kept out of the firmware's memory map.
    static let kvmReserved = FirmwarePlatform.Range(address: Machine.identityMapAddress, size: 0x4000, type: .reserved)
    /// The I/O port of COM1, where the firmware mirrors its text screen.
    static let serialConsolePort: UInt16 = 0x3F8

    /// The firmware paths (SeaBIOS's form) of `disks`, those of the kinds in `kinds` first in that order, the rest
    /// in the order given: virtio-blk disks come first among the virtio-pci functions, from slot 1; AHCI drives sit
    /// on ports 0 up of the controller in `ahciSlot`.
    static func bootOrder(_ disks: [DiskSetting], ahciSlot: Int, kinds: [DiskSetting.Media] = []) -> [String] {
        var virtio = 0
        var port = 0
        let paths = disks.map { disk in
            switch disk.interface {
            case .virtio:
                virtio += 1
                return (disk.media, "/pci@i0cf8/*@\(String(virtio, radix: 16))")
            case .ahci:
                port += 1
                return (disk.media, "/pci@i0cf8/*@\(String(ahciSlot, radix: 16))/drive@\(port - 1)/disk@0")
            }
        }
        let rank = { (media: DiskSetting.Media) in kinds.firstIndex(of: media) ?? kinds.count }
        return paths.enumerated().sorted { (rank($0.element.0), $0.offset) < (rank($1.element.0), $1.offset) }.map(\.element.1)
    }

    /// Loads the image, maps it and puts fw_cfg and the firmware's ports on `ports`; writes to the image exit
    /// through `mmio`. `slot` is the first memory slot after RAM's. `bootOrder` lists the boot devices' paths.
    static func attach(
        _ setting: FirmwareSetting, memory: GuestMemory, vm: VirtualMachine, slot: UInt32, platform: PlatformDescription,
        bootOrder: [String], ports: inout Bus, mmio: inout Bus, onReset: @escaping @Sendable () -> Void, logger: Logger
    ) throws(MachineError) -> FirmwareBoot {
        let image: FirmwareImage
        do {
            image = try FirmwareImage(path: setting.path)
        } catch {
            throw MachineError(error.description)
        }
        let shadow = image.shadow
        do {
            try memory.write(shadow.bytes, at: shadow.address)
            try vm.setMemorySlot(
                slot, guestAddress: image.highAddress, size: UInt64(image.size), host: UnsafeMutableRawPointer(mutating: image.bytes),
                flags: .readOnly)
        } catch {
            throw MachineError("firmware \(setting.path): \(error)")
        }

        var map = memory.regions.map { FirmwarePlatform.Range(address: $0.guestAddress, size: $0.size, type: .ram) }
        map.append(kvmReserved)
        if platform.pciHostBridge != nil {
            map.append(FirmwarePlatform.Range(address: PCIMemoryMap.ecamBase, size: PCIMemoryMap.ecamSize, type: .reserved))
        }
        let items: FirmwareConfigItems
        do {
            items = try FirmwareConfigItems.seaBIOS(FirmwarePlatform(
                memoryMap: map, vcpuCount: platform.vcpuCount, acpi: try ACPIBuilder.build(platform, at: 0),
                bootOrder: bootOrder, serialConsolePort: serialConsolePort))
        } catch {
            throw MachineError("firmware tables: \(error)")
        }

        var debugLog: (any ConsoleOutput)?
        if let path = setting.log {
            do { debugLog = try FileDescriptorOutput(appendingTo: path) } catch { throw MachineError("firmware log: \(error)") }
        }
        do {
            try ports.register(FirmwareConfigDevice(items: items, memory: memory) { line in logger.warning("\(line)") },
                               base: FirmwareConfigDevice.basePort, length: FirmwareConfigDevice.portSpan)
            try ports.register(SystemControlPortA(onReset: onReset), base: SystemControlPortA.port, length: 1)
            if let debugLog { try ports.register(DebugConsole(sink: debugLog), base: DebugConsole.port, length: 1) }
            try mmio.register(ReadOnlyMemoryWrites(base: image.highAddress) { line in logger.warning("\(line)") },
                              base: image.highAddress, length: UInt64(image.size))
        } catch {
            throw MachineError("firmware device layout: \(error)")
        }
        return FirmwareBoot(image: image, debugLog: debugLog)
    }
}
