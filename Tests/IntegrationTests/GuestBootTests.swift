import Glibc
import Synchronization
import TestSupport
import Testing
import VMM

@Suite(.serialized, .timeLimit(.minutes(3))) struct GuestBootTests {
    @Test func helloPrintsItsLineAndExitsZero() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("hello"), console: .none))
        #expect(run.output.contains("Hello from a Tern test guest"))
        #expect(run.outcome == .guestExit(0))
        #expect(run.outcome.exitStatus == 0)
    }

    @Test func commandLineReachesTheGuest() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("hello"), cmdline: "tern.test=42 quiet"))
        #expect(run.output.contains("tern.test=42 quiet"))
    }

    @Test(arguments: [1, 2, 4])
    func everyVCPUChecksIn(cpus: Int) throws {
        let run = try boot(VMConfig(kernel: Repository.guest("smp"), cpus: cpus))
        #expect(run.output.contains("smp: all \(cpus) vCPUs checked in"), "output: \(run.output)")
        #expect(run.outcome == .guestExit(0))
        for apicID in 1..<cpus {
            #expect(run.output.contains("smp: cpu \(apicID) checked in"))
        }
    }

    @Test func memtouchVerifiesAndChecksumIsDeterministic() throws {
        let config = VMConfig(kernel: try Repository.guest("memtouch"), cmdline: "mib=32", memory: MemorySize(bytes: 64 << 20))
        let first = try boot(config)
        let second = try boot(config)
        #expect(first.outcome == .guestExit(0))
        let line = try #require(first.output.split(separator: "\n").first { $0.contains("wrote and verified 32 MiB checksum 0x") })
        let checksum = line.split(separator: " ")[7]
        #expect(second.output.contains("checksum \(checksum)"))
    }

    @Test func memtouchReportsWhenRAMIsTooSmall() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("memtouch"), cmdline: "mib=512", memory: MemorySize(bytes: 32 << 20)))
        #expect(run.outcome == .guestExit(2))
        #expect(run.output.contains("does not fit"))
    }

    @Test func largeGuestSpansTheMMIOHole() throws {
        // 3.5 GiB of RAM: low RAM ends at 3 GiB, the rest sits above 4 GiB; the guest only touches what it uses.
        let run = try boot(VMConfig(kernel: Repository.guest("memtouch"), cmdline: "mib=8", memory: MemorySize(bytes: 3584 << 20)))
        #expect(run.outcome == .guestExit(0))
    }

    @Test func pinnedVCPUThreadsRunOnTheirCores() throws {
        let cores = Machine.availableCPUs()
        try #require(cores.count >= 2, "this host offers fewer than two cores")
        let pins = try PinList(parsing: "\(cores[1]),\(cores[0])")
        let seen = Mutex<[Int: String]>([:])
        let hooks = MachineHooks(vcpuStarted: { index, threadID in
            let status = readText("/proc/self/task/\(threadID)/status")
            let allowed = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
            seen.withLock { $0[index] = allowed.map { String($0.split(separator: "\t").last ?? "") } ?? "missing" }
        })
        let run = try boot(VMConfig(kernel: Repository.guest("smp"), cpus: 2, pin: pins), hooks: hooks)
        #expect(run.outcome == .guestExit(0))
        let affinity = seen.withLock { $0 }
        #expect(affinity[0] == "\(cores[1])")
        #expect(affinity[1] == "\(cores[0])")
    }

    @Test func vcpuSetPinningAllowsSeveralCores() throws {
        let cores = Machine.availableCPUs()
        try #require(cores.count >= 2)
        let seen = Mutex<String>("")
        let hooks = MachineHooks(vcpuStarted: { _, threadID in
            let status = readText("/proc/self/task/\(threadID)/status")
            seen.withLock { $0 = String(status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?.split(separator: "\t").last ?? "") }
        })
        let pins = PinList(sets: [CPUSet(cpus: [cores[0], cores[1]])])
        let run = try boot(VMConfig(kernel: Repository.guest("hello"), pin: pins), hooks: hooks)
        #expect(run.outcome == .guestExit(0))
        #expect(seen.withLock { $0 } == CPUSet(cpus: [cores[0], cores[1]]).description.replacingDashes)
    }
}

@Suite(.serialized, .timeLimit(.minutes(3))) struct CrashReportTests {
    @Test(arguments: ["mmio-exec", "triple"])
    func ringZeroFailureEndsTheVMWithAReport(mode: String) throws {
        let run = try boot(VMConfig(kernel: Repository.guest("crash"), cmdline: "mode=\(mode)"))
        guard case .crashed(let report) = run.outcome else {
            Issue.record("expected a crash report, got \(run.outcome)")
            return
        }
        #expect(report.contains("vCPU 0 stopped: KVM_EXIT_"))
        #expect(report.contains("at RIP 0x"))
        #expect(report.contains("64-bit long mode, ring 0"))
        #expect(report.contains("instruction bytes: "))
        #expect(run.outcome.exitStatus == 1)
    }

    @Test func emulationFailureNamesTheSuberror() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("crash"), cmdline: "mode=mmio-exec"))
        guard case .crashed(let report) = run.outcome else {
            Issue.record("expected a crash, got \(run.outcome)")
            return
        }
        #expect(report.contains("KVM_EXIT_INTERNAL_ERROR suberror 1 (emulation failure"))
        #expect(report.contains("RIP 0xd0000000"))
    }

    @Test func ringZeroInt3ReachesTheGuestsBreakpointHandler() throws {
        // Hardware hosts deliver #BP themselves; on software-virtualisation hosts Tern completes the int3 for KVM.
        let run = try boot(VMConfig(kernel: Repository.guest("crash"), cmdline: "mode=int3"))
        #expect(run.outcome == .guestExit(0x7E), "outcome: \(run.outcome)")
        #expect(run.output.contains("guest: exception 3"))
    }

    @Test func guestExceptionInRingThreeIsHandledByTheGuest() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("crash"), cmdline: "mode=ud2-user"))
        #expect(run.outcome == .guestExit(0x7E))
        #expect(run.output.contains("guest: exception 6"))
    }
}

@Suite(.timeLimit(.minutes(1))) struct BadInputTests {
    func buildError(_ config: VMConfig) -> String {
        do {
            _ = try Machine(config: config, console: DiscardOutput())
            return ""
        } catch {
            return error.description
        }
    }

    @Test func missingKernel() {
        #expect(buildError(VMConfig(kernel: "/nonexistent/vmlinux")) == "/nonexistent/vmlinux: No such file or directory")
    }

    @Test func garbageKernel() throws {
        let path = "/tmp/tern-garbage-\(getpid())"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = write(fd, Array(repeating: UInt8(0x42), count: 4096), 4096)
        close(fd)
        defer { unlink(path) }
        #expect(buildError(VMConfig(kernel: path)).hasPrefix("\(path): neither an ELF64 image nor a bzImage"))
    }

    @Test func tooLittleMemory() throws {
        #expect(buildError(VMConfig(kernel: try Repository.guest("hello"), memory: MemorySize(bytes: 1 << 20))).contains("at least 2 MiB"))
    }

    @Test func kernelLargerThanMemory() throws {
        // A segment loaded at 1 MiB whose 4 MiB (mostly BSS) cannot fit in 2 MiB of RAM.
        var builder = ELFBuilder()
        builder.segments = [(0x10_0000, [0x90, 0xF4], 4 << 20)]
        let path = temporaryFile(builder.build(), name: "large-bss")
        defer { unlink(path) }
        let message = buildError(VMConfig(kernel: path, memory: MemorySize(bytes: 2 << 20)))
        #expect(message.contains("lies outside guest RAM of 2 MiB"))
        #expect(message.contains("--memory"))
    }

    @Test func pinListNamingAMissingCore() throws {
        let message = buildError(VMConfig(kernel: try Repository.guest("hello"), pin: try PinList(parsing: "4000")))
        #expect(message.contains("host core 4000 is not available"))
    }

    @Test func unavailableKVMDevice() throws {
        let missing = buildError(VMConfig(kernel: try Repository.guest("hello"), kvmDevice: "/nonexistent/kvm"))
        #expect(missing.hasPrefix("/nonexistent/kvm does not exist"))
        let notKVM = buildError(VMConfig(kernel: try Repository.guest("hello"), kvmDevice: "/dev/null"))
        #expect(notKVM.contains("/dev/null is not a KVM device"))
    }
}

func readText(_ path: String) -> String {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 8192)
    let count = read(fd, &buffer, buffer.count)
    return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : ""
}

extension String {
    /// CPUSet writes sets with '+'; /proc writes them with ','.
    var replacingDashes: String { split(separator: "+").joined(separator: ",") }
}
