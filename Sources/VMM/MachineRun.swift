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

    /// Runs the VM until it stops, and returns why. Blocks the calling thread.
    ///
    /// - Parameters:
    ///   - hooks: observation callbacks.
    ///   - forwardInput: forward stdin to the guest's serial console (raw mode on a terminal, Ctrl-A x quits).
    ///   - handleSignals: stop the VM cleanly on SIGINT, SIGTERM and SIGHUP instead of dying.
    public func run(hooks: MachineHooks = MachineHooks(), forwardInput: Bool = false, handleSignals: Bool = false) -> MachineOutcome {
        VCPUKicker.installSignalHandler()
        var signals = sigset_t()
        sigemptyset(&signals)
        for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&signals, signal) }
        var signalDescriptor: Int32 = -1
        if handleSignals {
            pthread_sigmask(SIG_BLOCK, &signals, nil)
            signalDescriptor = signalfd(-1, &signals, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
        }
        defer {
            if signalDescriptor >= 0 { close(signalDescriptor) }
        }

        let gate = Latch(count: config.cpus)
        var threads: [pthread_t] = []
        for index in 0..<config.cpus {
            let pin = config.pin?.sets[index]
            guard let thread = spawnThread({ [self] in vcpuMain(index: index, pin: pin, gate: gate, hooks: hooks) }) else {
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

        var controlServer: ControlServer?
        if let path = config.apiSocket {
            do {
                controlServer = try ControlServer(path: path) { [self] request in handleControl(request) }
                controlServer?.start()
            } catch {
                control.stop(.failed(error.description))
            }
        }
        for thread in ioThreads { thread.start() }
        let statisticsTimer = config.balloon?.statisticsInterval.flatMap { interval in
            balloon.flatMap { balloon in spawnThread { [self] in requestBalloonStatistics(balloon, every: interval) } }
        }
        waitForStop(signalDescriptor: signalDescriptor)
        if let statisticsTimer { pthread_join(statisticsTimer, nil) }
        controlServer?.stop()
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
        if handleSignals {
            // Signals that arrived while the VM wound down are answered already: drop them rather than die of them.
            var info = signalfd_siginfo()
            while read(signalDescriptor, &info, MemoryLayout<signalfd_siginfo>.size) > 0 {}
            pthread_sigmask(SIG_UNBLOCK, &signals, nil)
        }
        return control.outcome ?? .failed("the VM stopped without a reason")
    }

    /// Asks the guest for fresh balloon statistics every `interval` seconds until the machine stops.
    private func requestBalloonStatistics(_ balloon: Balloon, every interval: UInt32) {
        var stopped = pollfd(fd: control.finished.descriptor, events: Int16(POLLIN), revents: 0)
        while !control.isStopping {
            let count = poll(&stopped, 1, Int32(interval) * 1000)
            if count < 0 && errno != EINTR { return }
            if count == 0 { balloon.requestStatistics() }
        }
    }

    /// Blocks until the machine stops, turning host signals into a clean stop.
    private func waitForStop(signalDescriptor: Int32) {
        var descriptors = [pollfd(fd: control.finished.descriptor, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: signalDescriptor, events: Int16(POLLIN), revents: 0)]
        while !control.isStopping || control.outcome == nil {
            let count = poll(&descriptors, signalDescriptor >= 0 ? 2 : 1, -1)
            if count < 0 {
                if errno == EINTR { continue }
                control.stop(.failed("poll: \(String(cString: strerror(errno)))"))
                return
            }
            if descriptors[1].revents & Int16(POLLIN) != 0 {
                var info = signalfd_siginfo()
                _ = read(signalDescriptor, &info, MemoryLayout<signalfd_siginfo>.size)
                let name = info.ssi_signo == UInt32(SIGINT) ? "SIGINT" : info.ssi_signo == UInt32(SIGTERM) ? "SIGTERM" : "SIGHUP"
                control.stop(.stoppedByHost(reason: "received \(name)"))
            }
            if descriptors[0].revents & Int16(POLLIN) != 0 { return }
        }
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
            runLoop(vcpu, index: index)
            control.unregister(index: index)
        }
    }

    /// Enters the guest and handles exits until the machine stops. Allocation-free on the I/O paths.
    private func runLoop(_ vcpu: VCPU, index: Int) {
        let ports = portBus
        let mmio = mmioBus
        var assists = 0
        while !control.isStopping {
            let exit: VCPUExit
            do {
                exit = try vcpu.run()
            } catch {
                control.stop(.failed("vCPU \(index): \(error)"))
                return
            }
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
                continue
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
                continue
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
}
