import CKVM
import Devices
import Glibc
import KVM
import Logging
import VirtioDevices
import X86

extension Machine {
    /// Model-specific registers every vCPU starts with: fast strings on, MTRRs enabled with write-back as the default type.
    static let bootMSRs: [(index: UInt32, value: UInt64)] = [
        (0x1A0, 0x1),  // IA32_MISC_ENABLE: fast string operations
        (0x2FF, 0x806),  // IA32_MTRR_DEF_TYPE: MTRRs enabled, default type write-back
    ]

    /// Runs the VM until it stops, and returns why. Blocks the calling thread. Host resources (disks, sockets,
    /// taps, the console file) were acquired when the machine was built; when it stops, the disks are flushed and
    /// the control socket is removed.
    ///
    /// Besides the handler for the signal that kicks vCPUs out of KVM_RUN (SIGRTMIN, unblocked on vCPU threads
    /// only), the machine changes no signal disposition or mask: a program that wants signals to stop the VM
    /// handles them itself and calls `stop(_:)`, which works from any thread, before or during `run`.
    ///
    /// - Parameters:
    ///   - hooks: observation callbacks.
    ///   - forwardInput: forward stdin to the guest's serial console (raw mode on a terminal, Ctrl-A x quits).
    public func run(hooks: MachineHooks = MachineHooks(), forwardInput: Bool = false) -> MachineOutcome {
        VCPUKicker.installSignalHandler()
        let gate = Latch(count: config.cpus)
        var threads: [pthread_t] = []
        for index in 0..<config.cpus {
            let pin = config.pin?.sets[index]
            guard let thread = spawnThread(named: "vcpu\(index)", { [self] in vcpuMain(index: index, pin: pin, gate: gate, hooks: hooks) }) else {
                control.stop(.failed("cannot start a thread for vCPU \(index): \(String(cString: strerror(errno)))"))
                // Threads already started wait at the gate for the ones that never came.
                gate.release()
                break
            }
            threads.append(thread)
        }

        if let vmmPin = config.vmmPin {
            _ = vmmPin.cpus.withUnsafeBufferPointer { ckvm_set_affinity(0, $0.baseAddress, Int32($0.count)) }
        }
        var input: ConsoleInput?
        if forwardInput, case .stdio = config.console {
            let control = control
            input = ConsoleInput(deliver: { [self] bytes in typeIntoConsole(bytes) },
                                 quit: { control.stop(.stoppedByHost(reason: "console escape (Ctrl-A x)")) })
            input?.start()
        }
        controlServer?.start { [self] request in handleControl(request) }
        for thread in ioThreads { thread.start() }
        serveCommands()
        controlServer?.shutdown()
        for thread in threads { pthread_join(thread, nil) }
        for thread in ioThreads { thread.stop() }
        for backend in backends {
            do {
                try backend.flush()
            } catch {
                logger.error("flushing a disk when the VM stopped: \(error)")
            }
        }
        input?.stop()
        return control.outcome ?? .failed("the VM stopped without a reason")
    }

    /// The body of vCPU `index`'s thread: pin, create and set up the vCPU, wait for the others, then run the guest.
    private func vcpuMain(index: Int, pin: CPUSet?, gate: Latch, hooks: MachineHooks) {
        _ = ckvm_unblock_signal(ckvm_kick_signal())
        let threadID = ckvm_gettid()
        if let pin {
            let result = pin.cpus.withUnsafeBufferPointer { ckvm_set_affinity(0, $0.baseAddress, Int32($0.count)) }
            if result != 0 {
                control.stop(.failed("cannot pin vCPU \(index) to host cores \(pin): \(String(cString: strerror(errno)))"))
            }
        }
        let vcpu: VCPU
        do {
            vcpu = try vm.createVCPU(id: UInt32(index))
            try vcpu.setCPUID(cpuid.entries(forVCPU: index))
            try vcpu.setMSRs(Self.bootMSRs)
            try vcpu.resetFloatingPoint()
            if index == 0, let plan {
                try vcpu.setSystemRegisters(plan.systemRegisters)
                try vcpu.setRegisters(plan.registers)
            }
        } catch {
            control.stop(.failed("vCPU \(index): \(error)"))
            gate.arriveAndWait()
            return
        }
        control.register(index: index, threadID: threadID, kicker: vcpu.kicker)
        if let pin {
            logger.info("vCPU \(index) (thread \(threadID)) pinned to host cores \(pin)")
        }
        hooks.vcpuStarted?(index, threadID)
        gate.arriveAndWait()
        withExtendedLifetime(vcpu) {
            runLoop(vcpu, index: index, channel: vcpus.channels[index])
            control.unregister(index: index)
        }
    }

    /// Enters the guest and handles exits until the machine stops, obeying the commands on `channel` between two
    /// entries. Allocation-free on the I/O paths.
    private func runLoop(_ vcpu: VCPU, index: Int, channel: VCPUChannel) {
        let ports = portBus
        let mmio = mmioBus
        var assists = 0
        // Read once: with tracing off (anything below -vv) the loop pays one predictable branch per exit.
        let tracing = logger.logLevel <= .trace
        while !control.isStopping {
            if channel.hasCommands {
                obeyCommands(vcpu, index: index, channel: channel, ports: ports, mmio: mmio, assists: &assists)
                continue
            }
            let exit: VCPUExit
            do {
                exit = try vcpu.run()
            } catch {
                control.stop(.failed("vCPU \(index): \(error)"))
                return
            }
            if tracing { logger.trace("vCPU \(index): exit \(exit.traceDescription)") }
            handle(exit, vcpu: vcpu, index: index, ports: ports, mmio: mmio, assists: &assists)
        }
    }

    /// Carries out the commands queued on `channel`, on the vCPU's own thread. After `pause` it waits for more
    /// (until `resume`, or the machine stops); otherwise it returns once the queue is empty.
    private func obeyCommands(_ vcpu: VCPU, index: Int, channel: VCPUChannel, ports: Bus, mmio: Bus, assists: inout Int) {
        var paused = false
        while let next = channel.nextCommand(wait: paused) {
            let result: Result<VCPUReply, KVMError>
            switch next.command {
            case .pause:
                if !paused {
                    completePendingExit(vcpu, index: index, ports: ports, mmio: mmio, assists: &assists)
                    do {
                        try vcpu.noteClockPaused()
                    } catch {
                        logger.warning("vCPU \(index): \(error)")
                    }
                    paused = true
                }
                result = .success(.paused)
            case .resume:
                paused = false
                result = .success(.resumed)
            case .captureState(let msrIndices, let extendedStateSize):
                result = Result { () throws(KVMError) in
                    .captured(try vcpu.captureState(msrIndices: msrIndices, extendedStateSize: extendedStateSize))
                }
            case .restoreState(let state):
                result = Result { () throws(KVMError) in
                    try vcpu.restoreState(state)
                    return .restored
                }
            }
            channel.answer(next.sequence, result)
            if !paused && !channel.hasCommands { return }
        }
    }

    /// Re-enters KVM_RUN with `immediate_exit` set, so that KVM finishes the instruction whose port or MMIO access
    /// was just handled (its guest state is consistent only then) and returns without running the guest further.
    /// A string instruction may need more exits before it completes; they are handled too.
    private func completePendingExit(_ vcpu: VCPU, index: Int, ports: Bus, mmio: Bus, assists: inout Int) {
        while !control.isStopping {
            vcpu.kicker.kick()
            let exit: VCPUExit
            do {
                exit = try vcpu.run()
            } catch {
                control.stop(.failed("vCPU \(index): \(error)"))
                return
            }
            if case .interrupted = exit { return }
            handle(exit, vcpu: vcpu, index: index, ports: ports, mmio: mmio, assists: &assists)
        }
    }

    /// Handles one exit from the guest.
    @inline(__always)
    private func handle(_ exit: VCPUExit, vcpu: VCPU, index: Int, ports: Bus, mmio: Bus, assists: inout Int) {
        switch exit {
        case .portOut(let port, let size, let count, let data):
            var item = UnsafeRawPointer(data)
            for _ in 0..<count {
                ports.write(UInt64(port), from: UnsafeRawBufferPointer(start: item, count: size))
                item += size
            }
        case .portIn(let port, let size, let count, let data):
            var item = data
            for _ in 0..<count {
                ports.read(UInt64(port), into: UnsafeMutableRawBufferPointer(start: item, count: size))
                item += size
            }
        case .mmioWrite(let address, let length, let data):
            if !mmio.write(address, from: UnsafeRawBufferPointer(start: data, count: length)) {
                logger.debug("vCPU \(index): write to unclaimed MMIO address 0x\(String(address, radix: 16))")
            }
        case .mmioRead(let address, let length, let data):
            mmio.read(address, into: UnsafeMutableRawBufferPointer(start: data, count: length))
        case .interrupted:
            break
        case .shutdown:
            control.stop(.crashed(report: CrashReport.describe(vcpu: vcpu, index: index, memory: memory,
                                                               exit: "KVM_EXIT_SHUTDOWN (triple fault)")))
        case .systemEvent(let type):
            switch Int32(type) {
            case KVM_SYSTEM_EVENT_SHUTDOWN: control.stop(.powerOff)
            case KVM_SYSTEM_EVENT_RESET: control.stop(.reset)
            default:
                control.stop(.crashed(report: CrashReport.describe(vcpu: vcpu, index: index, memory: memory,
                                                                   exit: "KVM_EXIT_SYSTEM_EVENT type \(type) (guest crash)")))
            }
        case .internalError(let suberror, _) where Int32(suberror) == KVM_INTERNAL_ERROR_EMULATION
            && InstructionAssist.handleEmulationFailure(vcpu, memory: memory):
            assists += 1
        case .internalError(let suberror, let data):
            if assists > 0 { logger.info("vCPU \(index): completed \(assists) instructions the host's KVM could not emulate") }
            control.stop(.crashed(report: CrashReport.describe(vcpu: vcpu, index: index, memory: memory,
                                                               exit: CrashReport.internalError(suberror: suberror, data: data))))
        case .failedEntry(let reason, let cpu):
            control.stop(.crashed(report: CrashReport.describe(vcpu: vcpu, index: index, memory: memory,
                                                               exit: "KVM_EXIT_FAIL_ENTRY (hardware reason 0x\(String(reason, radix: 16)) on host CPU \(cpu))")))
        case .halt:
            control.stop(.crashed(report: CrashReport.describe(vcpu: vcpu, index: index, memory: memory, exit: "KVM_EXIT_HLT")))
        case .other(let reason):
            control.stop(.crashed(report: CrashReport.describe(vcpu: vcpu, index: index, memory: memory,
                                                               exit: "unhandled exit reason \(reason)")))
        }
    }
}

extension VCPUExit {
    /// The exit as a trace line shows it: the kind, and the address, size and data of I/O.
    var traceDescription: String {
        func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
        func bytes(_ data: UnsafeRawPointer, _ count: Int) -> String {
            UnsafeRawBufferPointer(start: data, count: count).map { String($0, radix: 16) }.joined(separator: " ")
        }
        switch self {
        case .portOut(let port, let size, let count, let data): return "port write \(hex(UInt64(port))) size \(size) x\(count): \(bytes(data, size * count))"
        case .portIn(let port, let size, let count, _): return "port read \(hex(UInt64(port))) size \(size) x\(count)"
        case .mmioWrite(let address, let length, let data): return "MMIO write \(hex(address)) size \(length): \(bytes(data, length))"
        case .mmioRead(let address, let length, _): return "MMIO read \(hex(address)) size \(length)"
        default: return "\(self)"
        }
    }
}
