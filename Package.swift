// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Tern",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tern", targets: ["tern"]),
        .executable(name: "ternd", targets: ["ternd"]),
        .library(name: "VMM", targets: ["VMM"]),
        .library(name: "Qcow2", targets: ["Qcow2"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: [
        // C shim over <linux/kvm.h>: ioctl numbers, signal and affinity helpers Swift cannot import.
        .target(name: "CKVM"),
        // Typed KVM bindings: /dev/kvm, VM and vCPU file descriptors.
        .target(name: "KVM", dependencies: ["CKVM", "X86", "Snapshot"]),
        // memfd-backed guest RAM with bounds-checked access.
        .target(name: "GuestMemory", dependencies: ["CKVM"]),
        // Transport-independent VirtIO core: split virtqueues, feature negotiation, the device protocol.
        .target(name: "Virtio", dependencies: ["GuestMemory"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "GuestMemory", "TestSupport"]),
        // The virtio-mmio (version 2) transport: one VirtioDevice behind a register window on the MMIO bus.
        .target(name: "VirtioMMIO", dependencies: ["Virtio", "Devices", "GuestMemory"]),
        // VirtIO device models, transport-independent: block (virtio-blk), console (virtio-console), entropy (virtio-rng).
        .target(name: "VirtioDevices", dependencies: ["Virtio", "GuestMemory", "Qcow2", "Devices"]),
        // Debian's libslirp (libslirp-dev), for user-mode networking.
        .systemLibrary(name: "CSlirp", path: "Sources/CSlirp"),
        // virtio-net host backends: a Linux tap and libslirp user-mode NAT; keeps the C library out of VirtioDevices.
        .target(name: "NetBackends", dependencies: ["VirtioDevices", "Virtio", "CSlirp", "CKVM"]),
        .testTarget(
            name: "VirtioDevicesTests",
            dependencies: ["VirtioDevices", "Virtio", "GuestMemory", "Qcow2", "NetBackends", "VMM", "TestSupport"]
        ),
        // PCI platform: type-0 configuration spaces, BARs, MSI-X, the host bridge, ECAM and port 0xCF8 front ends.
        .target(name: "PCI", dependencies: ["Devices"]),
        // The modern virtio-pci transport: one VirtioDevice behind vendor capabilities, a 64-bit BAR and MSI-X.
        .target(name: "VirtioPCI", dependencies: ["Virtio", "PCI", "GuestMemory", "Devices"]),
        .testTarget(
            name: "PCITests",
            dependencies: ["PCI", "VirtioPCI", "Virtio", "VirtioDevices", "GuestMemory", "Devices", "TestSupport"]
        ),
        .testTarget(
            name: "VirtioMMIOTests",
            dependencies: ["VirtioMMIO", "VirtioDevices", "Virtio", "Devices", "GuestMemory", "TestSupport"]
        ),
        // The I/O bus and platform devices (UART, i8042, debug exit).
        .target(name: "Devices"),
        // x86 architecture values: CPUID policy, descriptors, page tables, boot register state.
        .target(name: "X86"),
        // Debian's compression libraries, for kernels decompressed on the host.
        .systemLibrary(name: "CLzma", path: "Sources/CLzma"),
        .systemLibrary(name: "CLz4", path: "Sources/CLz4"),
        // One-shot, bounded gzip/xz/zstd/lz4 decompression.
        .target(name: "Decompression", dependencies: ["CZlib", "CZstd", "CLzma", "CLz4"]),
        // Kernel image parsing and placement: ELF64, PVH start info, bzImage.
        .target(name: "BootLoader", dependencies: ["GuestMemory", "X86", "Decompression"]),
        // Firmware tables: ACPI (RSDP, XSDT, FADT, MADT, MCFG, DSDT with an AML builder) and the MP table. Stdlib only.
        .target(name: "ACPI"),
        .testTarget(name: "ACPITests", dependencies: ["ACPI", "Devices"]),
        // The VM state format: versioned, checksummed records that every stateful part writes and reads back,
        // for snapshots and migration. Stdlib only, so that every layer can describe its state.
        .target(name: "Snapshot"),
        .testTarget(name: "SnapshotTests", dependencies: ["Snapshot", "KVM", "TestSupport"]),
        // The live-migration stream: addresses, frames, page batches sent from and received into guest memory.
        .target(name: "Migration", dependencies: ["Snapshot"]),
        .testTarget(name: "MigrationTests", dependencies: ["Migration", "TestSupport"]),
        // AHCI (ICH9) SATA controller: ATA disks and ATAPI CD-ROMs over block backends, guest DMA checked.
        .target(name: "AHCI", dependencies: ["PCI", "Devices", "GuestMemory", "Qcow2"]),
        .testTarget(name: "AHCITests", dependencies: ["AHCI", "PCI", "Devices", "GuestMemory", "Qcow2", "TestSupport"]),
        // Firmware boot: the fw_cfg device and what it serves SeaBIOS (e820, SMBIOS, ACPI through the table loader).
        .target(name: "Firmware", dependencies: ["ACPI", "Devices", "GuestMemory"]),
        .testTarget(name: "FirmwareTests", dependencies: ["Firmware", "ACPI", "Devices", "GuestMemory", "TestSupport"]),
        // Assembles a machine from the layers above and runs it.
        .target(
            name: "VMM",
            dependencies: [
                "KVM", "GuestMemory", "Devices", "X86", "BootLoader", "ACPI", "CKVM", "PCI", "Virtio", "VirtioMMIO", "VirtioPCI", "VirtioDevices", "NetBackends", "Qcow2",
                "Firmware", "AHCI",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // System zlib (raw deflate for compressed qcow2 clusters) and libzstd (zstd clusters).
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd"),
        // Debian's liburing (liburing-dev): io_uring for asynchronous block I/O.
        .systemLibrary(name: "CURing", path: "Sources/CURing"),
        // Block devices: raw files and the qcow2 engine (backing chains, snapshots, compression). No KVM dependency.
        .target(name: "Qcow2", dependencies: ["CZlib", "CZstd", "CURing"]),
        // Initramfs images: a cpio newc writer, modules.dep resolution, busybox and the /init script. Stdlib + Glibc.
        .target(name: "Initramfs"),
        .testTarget(name: "InitramfsTests", dependencies: ["Initramfs"]),
        .executableTarget(
            name: "tern",
            dependencies: [
                "VMM",
                "Qcow2",
                "Initramfs",
                "ToolstackAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // pidfd_open, pidfd_send_signal and posix_spawn's closefrom action, which glibc's Swift module does not export.
        .target(name: "CPidFD"),
        // ternd's wire format (the JSON bodies of its REST API) and a small HTTP/1.1 client over its sockets, shared by
        // the daemon, `tern vm` and the tests. Stdlib and Glibc only, so `tern` stays free of the server's packages.
        .target(name: "ToolstackAPI"),
        // The host toolstack behind ternd: the SQLite store, VM process supervision, the REST API.
        .target(
            name: "Toolstack",
            dependencies: [
                "ToolstackAPI", "VMM", "CPidFD",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            resources: [.copy("openapi.yaml")]
        ),
        .executableTarget(
            name: "ternd",
            dependencies: [
                "Toolstack", "ToolstackAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "ToolstackTests", dependencies: ["Toolstack", "ToolstackAPI"]),
        .testTarget(
            name: "UnitTests",
            dependencies: ["KVM", "GuestMemory", "Devices", "X86", "BootLoader", "VMM", "Decompression", "CZlib", "CZstd", "CLzma", "CLz4",
                           "TestSupport", "Firmware"]
        ),
        .testTarget(name: "Qcow2Tests", dependencies: ["Qcow2", "TestSupport"]),
        // What every test target shares: driver-side ring writers, recording interrupt sinks, a seeded
        // generator, fault-injecting files.
        .target(name: "TestSupport", dependencies: ["Devices", "GuestMemory", "Virtio", "Qcow2"], path: "Tests/TestSupport"),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["VMM", "KVM", "CKVM", "Initramfs", "TestSupport", .product(name: "Logging", package: "swift-log")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
