import Glibc
import Testing
import VMM

/// A `tern` process the test watches while it runs: stdout and stderr go to files, read when it has ended.
final class RunningProcess {
    let pid: pid_t
    private let outputPath: String
    private let errorPath: String

    /// Starts `arguments` with stdin from /dev/null; through `sh -c` when `shell` (for a umask).
    init(_ arguments: [String], shell: String? = nil) throws {
        let stem = "/tmp/tern-process-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        outputPath = stem + ".out"
        errorPath = stem + ".err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let command = shell.map { ["/bin/sh", "-c", $0 + "; exec \"$@\"", "sh"] + arguments } ?? arguments
        var argv = command.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        // The child starts as from a shell: no signal blocked or ignored, whatever the test runner's thread has.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        try #require(posix_spawn(&pid, command[0], &actions, &attributes, &argv, environ) == 0, "cannot run \(command[0])")
        self.pid = pid
    }

    deinit {
        unlink(outputPath)
        unlink(errorPath)
    }

    /// Waits up to `seconds` for the process to end (killing it after that) and returns what it printed.
    func finish(within seconds: Int = 30) -> ProcessResult {
        var status: Int32 = 0
        var waited = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if waited >= seconds * 100 {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                break
            }
            usleep(10_000)
            waited += 1
        }
        let exitStatus = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        return ProcessResult(status: exitStatus, stdout: Self.read(outputPath), stderr: Self.read(errorPath))
    }

    /// Whether the process has an open descriptor on `path` (the whole path, as /proc shows it).
    func hasOpen(_ path: String) -> Bool {
        guard let directory = opendir("/proc/\(pid)/fd") else { return false }
        defer { closedir(directory) }
        var target = [CChar](repeating: 0, count: 4096)
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let count = readlink("/proc/\(pid)/fd/\(name)", &target, target.count - 1)
            if count > 0 && String(decoding: target[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) == path { return true }
        }
        return false
    }

    private static func read(_ path: String) -> String {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { return "" }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = Glibc.read(descriptor, &chunk, chunk.count)
            if count <= 0 { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Waits up to `seconds` for `condition`.
private func eventually(within seconds: Double = 20, _ condition: () -> Bool) -> Bool {
    var waited = 0.0
    while !condition() {
        if waited >= seconds { return false }
        usleep(1000)
        waited += 0.001
    }
    return true
}

private func exists(_ path: String) -> Bool {
    var status = stat()
    return lstat(path, &status) == 0
}

/// A connected Unix stream socket to `path`, or -1.
private func connectUnix(_ path: String) -> Int32 {
    let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
    }
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard connected == 0 else {
        close(descriptor)
        return -1
    }
    return descriptor
}

/// A Unix socket bound at `path`, listening when `listening`.
private func bindUnix(_ path: String, listening: Bool) -> Int32 {
    let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
    }
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if listening { listen(descriptor, 4) }
    return descriptor
}

private func temporaryPath(_ name: String) -> String {
    "/tmp/tern-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

/// The process side of `tern run`: its control socket, its signals, and the host resources it takes before the
/// guest runs.
@Suite(.serialized, .timeLimit(.minutes(2))) struct VMMProcessTests {
    /// A guest that waits (for console input that never comes) until it is stopped, with a control socket and a disk.
    static func waitingGuest(socket: String, disk: String) throws -> [String] {
        [try Repository.ternBinary(), "run", "--kernel", try Repository.guest("console"), "--virtio-console",
         "--cmdline", "expect-input=1 timeout=100000000000000", "--console", "none", "--api-socket", socket,
         "--disk", "path=\(disk)"]
    }

    /// Starts the waiting guest (with `extra` arguments) and waits until its control socket answers.
    static func startWaitingGuest(shell: String? = nil, extra: [String] = []) throws -> (RunningProcess, socket: String, disk: String) {
        let socket = temporaryPath("control") + ".sock"
        let disk = temporaryPath("disk") + ".raw"
        try #require(writeFile(disk, String(repeating: "\0", count: 1 << 20)))
        let process = try RunningProcess(waitingGuest(socket: socket, disk: disk) + extra, shell: shell)
        let answered = eventually {
            if case .success = ControlClient.send(ControlRequest(command: "status"), to: socket) { return true }
            return false
        }
        try #require(answered, "the VM's control socket never answered")
        return (process, socket, disk)
    }

    @Test func clientsThatLeaveAtOnceNeverStopTheVM() throws {
        let (process, socket, disk) = try Self.startWaitingGuest()
        defer { _ = unlinkFile(disk) }
        for round in 0..<14 {
            let connection = connectUnix(socket)
            #expect(connection >= 0)
            if round % 2 == 1 {
                let request = Array(#"{"command":"status"}"#.utf8) + [0x0A]
                _ = write(connection, request, request.count)
            }
            close(connection)
        }
        let status = ControlClient.send(ControlRequest(command: "status"), to: socket)
        #expect((try? status.get())?.state == "running", "\(status)")
        #expect(kill(process.pid, SIGTERM) == 0)
        let result = process.finish()
        #expect(result.status == 130, "stderr: \(result.stderr)")
        #expect(!exists(socket))
    }

    @Test func ternControlPausesAndResumesTheVM() throws {
        let (process, socket, disk) = try Self.startWaitingGuest(extra: ["--cpus", "2"])
        defer { _ = unlinkFile(disk) }
        func control(_ command: String) throws -> ProcessResult {
            try runProcess([try Repository.ternBinary(), "control", "--api-socket", socket, command])
        }
        let paused = try control("pause")
        #expect(paused.status == 0 && paused.stdout == #"{"ok":true,"state":"paused"}"# + "\n", "\(paused)")
        #expect(try control("status").stdout.contains(#""state":"paused""#))
        let again = try control("pause")
        #expect(again.status == 1 && again.stderr.contains("cannot pause a VM that is paused"), "\(again)")
        let resumed = try control("resume")
        #expect(resumed.status == 0 && resumed.stdout == #"{"ok":true,"state":"running"}"# + "\n", "\(resumed)")
        #expect(try control("status").stdout.contains(#""state":"running""#))
        let wrong = try control("resume")
        #expect(wrong.status == 1 && wrong.stderr.contains("cannot resume a VM that is running"), "\(wrong)")
        #expect(try control("pause").status == 0)
        #expect(try control("stop").status == 0)
        #expect(process.finish().status == 130)
    }

    @Test func aSilentClientDoesNotHoldUpAnother() throws {
        let (process, socket, disk) = try Self.startWaitingGuest()
        defer { _ = unlinkFile(disk) }
        let silent = connectUnix(socket)
        #expect(silent >= 0)
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        let status = ControlClient.send(ControlRequest(command: "status"), to: socket)
        var end = timespec()
        clock_gettime(CLOCK_MONOTONIC, &end)
        close(silent)
        #expect((try? status.get())?.ok == true, "\(status)")
        #expect(end.tv_sec - start.tv_sec < 2, "the answer waited for the silent client")
        _ = ControlClient.send(ControlRequest(command: "stop"), to: socket)
        #expect(process.finish().status == 130)
    }

    @Test func controlSocketIsPrivateWhateverTheUmask() throws {
        let (process, socket, disk) = try Self.startWaitingGuest(shell: "umask 000")
        defer { _ = unlinkFile(disk) }
        var status = stat()
        #expect(lstat(socket, &status) == 0)
        #expect(status.st_mode & 0o777 == 0o600, "mode \(String(status.st_mode & 0o777, radix: 8))")
        _ = ControlClient.send(ControlRequest(command: "stop"), to: socket)
        #expect(process.finish().status == 130)
    }

    @Test func signalsWithoutAMeaningAreIgnoredAndStopSignalsStopCleanly() throws {
        for stopSignal in [SIGTERM, SIGINT, SIGHUP] {
            let (process, socket, disk) = try Self.startWaitingGuest()
            defer { _ = unlinkFile(disk) }
            for ignored in [SIGUSR1, SIGUSR2, SIGALRM, SIGPIPE] { #expect(kill(process.pid, ignored) == 0) }
            let status = ControlClient.send(ControlRequest(command: "status"), to: socket)
            #expect((try? status.get())?.state == "running", "\(status)")
            #expect(kill(process.pid, stopSignal) == 0)
            let result = process.finish()
            #expect(result.status == 130, "signal \(stopSignal): stderr \(result.stderr)")
            #expect(!exists(socket), "signal \(stopSignal) left the control socket behind")
        }
    }

    @Test func aStopSignalWhileTheVMIsBuiltStopsItBeforeTheGuestRuns() throws {
        // A large initrd keeps the VM in construction long enough to signal it there.
        let initrd = temporaryPath("initrd")
        let descriptor = open(initrd, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(descriptor >= 0)
        let block = [UInt8](repeating: 0x5A, count: 1 << 20)
        for _ in 0..<96 { _ = write(descriptor, block, block.count) }
        close(descriptor)
        defer { _ = unlinkFile(initrd) }
        let socket = temporaryPath("control") + ".sock"
        let process = try RunningProcess([try Repository.ternBinary(), "run", "--kernel", try Repository.guest("hello"),
                                          "--initrd", initrd, "--memory", "512M", "--api-socket", socket])
        #expect(eventually { process.hasOpen("anon_inode:kvm-vm") }, "tern never created its KVM VM")
        #expect(kill(process.pid, SIGTERM) == 0)
        let result = process.finish()
        #expect(result.status == 130, "stderr: \(result.stderr)")
        #expect(!result.stdout.contains("Hello"), "the guest ran: \(result.stdout)")
        #expect(!exists(socket))
    }

    @Test func aSocketARunningVMServesIsRefusedBeforeTheGuestRuns() throws {
        let socket = temporaryPath("control") + ".sock"
        let owner = bindUnix(socket, listening: true)
        defer {
            close(owner)
            unlink(socket)
        }
        let result = try runProcess([Repository.ternBinary(), "run", "--kernel", Repository.guest("hello"), "--api-socket", socket])
        #expect(result.status == 1)
        #expect(result.stdout.isEmpty, "the guest ran: \(result.stdout)")
        #expect(result.stderr == "tern: --api-socket \(socket): a running VM already serves this socket; stop it or choose another path\n")
        #expect(exists(socket))
    }

    @Test func aStaleSocketIsReplaced() throws {
        let socket = temporaryPath("control") + ".sock"
        close(bindUnix(socket, listening: false))
        defer { unlink(socket) }
        let result = try runProcess([Repository.ternBinary(), "run", "--kernel", Repository.guest("hello"), "--api-socket", socket])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("Hello from a Tern test guest"))
        #expect(!exists(socket))
    }

    @Test(arguments: ["--kernel", "--initrd", "--config", "--console", "--disk"])
    func aFIFOIsRefusedWithOneLine(option: String) throws {
        let fifo = temporaryPath("fifo")
        try #require(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        var arguments = [try Repository.ternBinary(), "run"]
        switch option {
        case "--kernel": arguments += ["--kernel", fifo]
        case "--console": arguments += ["--kernel", try Repository.guest("hello"), "--console", "file:" + fifo]
        case "--disk": arguments += ["--kernel", try Repository.guest("hello"), "--disk", "path=" + fifo]
        default: arguments += ["--kernel", try Repository.guest("hello"), option, fifo]
        }
        let process = try RunningProcess(arguments)
        let result = process.finish(within: 20)
        #expect(result.status == 1 || result.status == 2, "stderr: \(result.stderr)")
        let shown = option == "--console" ? "file:" + fifo : option == "--disk" ? "path=" + fifo : fifo
        #expect(result.stderr.hasPrefix("tern: \(option) \(shown): a FIFO, not a regular file"),
                "stderr: \(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1)
        #expect(result.stdout.isEmpty)
    }

    @Test func consoleOutputMayGoToACharacterDevice() throws {
        let result = try runProcess([Repository.ternBinary(), "run", "--kernel", Repository.guest("hello"), "--console", "file:/dev/null"])
        #expect(result.status == 0, "stderr: \(result.stderr)")
    }

    @Test func theUsersCommandLineReachesANonLinuxGuestUnchanged() throws {
        let result = try runProcess([Repository.ternBinary(), "run", "--kernel", Repository.guest("hello"), "--cmdline", "alpha=1 beta"])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.split(whereSeparator: \.isNewline).contains("cmdline: alpha=1 beta"), "stdout: \(result.stdout)")
    }

    @Test(arguments: [
        (["--memory", "1024"], "tern: --memory 1024: a bare number is bytes; did you mean 1024M?\n"),
        (["--memory", "15T"], "tern: --memory 15T is more than this host's"),
        (["--disk", "path=a,path=b"], "tern: disk 'path=a,path=b': path is given twice; give it once\n"),
        (["--name", "two words"], "tern: --name 'two words' is not a name"),
    ])
    func settingErrorsNameTheOption(arguments: [String], expected: String) throws {
        let result = try runProcess([Repository.ternBinary(), "run", "--kernel", Repository.guest("hello")] + arguments)
        #expect(result.status == 2)
        #expect(result.stderr.hasPrefix(expected), "stderr: \(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1)
        #expect(result.stdout.isEmpty)
    }

    @Test func aConfigFilesPathsAreRelativeToIt() throws {
        let directory = temporaryPath("config")
        try #require(mkdir(directory, 0o700) == 0)
        let kernel = directory + "/hello.elf"
        try #require(symlink(try Repository.guest("hello"), kernel) == 0)
        let config = directory + "/vm.json"
        try #require(writeFile(config, #"{"kernel": "hello.elf", "console": "file:console.txt", "balloon": "on", "name": "web-1"}"#))
        defer {
            for path in [kernel, config, directory + "/console.txt"] { unlink(path) }
            rmdir(directory)
        }
        let result = try runProcess([Repository.ternBinary(), "run", "--config", config])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        let console = open(directory + "/console.txt", O_RDONLY)
        #expect(console >= 0, "the console file is not next to the config file")
        if console >= 0 { close(console) }
    }

    @Test func threadsAreNamedByRoleAndTheNameShowsInStatusAndLogs() throws {
        let (process, socket, disk) = try Self.startWaitingGuest(extra: ["--cpus", "2", "--name", "web-1", "-v"])
        defer { _ = unlinkFile(disk) }
        func threadNames() -> [String] {
            var names: [String] = []
            guard let directory = opendir("/proc/\(process.pid)/task") else { return names }
            while let entry = readdir(directory) {
                let task = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                let descriptor = open("/proc/\(process.pid)/task/\(task)/comm", O_RDONLY)
                guard descriptor >= 0 else { continue }
                var buffer = [UInt8](repeating: 0, count: 32)
                let count = read(descriptor, &buffer, buffer.count)
                close(descriptor)
                if count > 0 { names.append(String(decoding: buffer[..<count].prefix { $0 != 0x0A }, as: UTF8.self)) }
            }
            closedir(directory)
            return names
        }
        let roles = ["vcpu0", "vcpu1", "io-blk0", "io-console", "control", "signals"]
        // The control socket answers before every thread has started and named itself: wait up to 10 s for them.
        var names = threadNames()
        for _ in 0..<100 where !roles.allSatisfy(names.contains) {
            usleep(100_000)
            names = threadNames()
        }
        for role in roles {
            #expect(names.contains(role), "no thread named \(role) among \(names)")
        }
        let status = ControlClient.send(ControlRequest(command: "status"), to: socket)
        #expect((try? status.get())?.name == "web-1", "\(status)")
        _ = ControlClient.send(ControlRequest(command: "stop"), to: socket)
        let result = process.finish()
        #expect(result.status == 130)
        #expect(result.stderr.contains("vm=web-1"), "stderr: \(result.stderr)")
    }

    @Test func doubleVerboseTracesExitsAndOthersDoNot() throws {
        let traced = try runProcess([Repository.ternBinary(), "run", "-vv", "--kernel", Repository.guest("hello")])
        #expect(traced.status == 0)
        #expect(traced.stderr.contains("vCPU 0: exit port write 0x3f8 size 1 x1: 48"), "stderr: \(traced.stderr.prefix(2000))")
        let quiet = try runProcess([Repository.ternBinary(), "run", "-v", "--kernel", Repository.guest("hello")])
        #expect(quiet.status == 0)
        #expect(!quiet.stderr.contains(" trace "))
    }

    @Test func versionReportsTheBuildAndTheHostsKVM() throws {
        let result = try runProcess([Repository.ternBinary(), "version"])
        #expect(result.status == 0)
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.count == 3, "stdout: \(result.stdout)")
        #expect(lines.first?.hasPrefix("tern ") == true)
        #expect(lines.dropFirst().first?.hasPrefix("built with Swift 6.") == true, "stdout: \(result.stdout)")
        #expect(lines.last?.hasPrefix("KVM: API version 12 at /dev/kvm") == true, "stdout: \(result.stdout)")
        let missing = try runProcess([Repository.ternBinary(), "version", "--kvm-device", "/nonexistent/kvm"])
        #expect(missing.stdout.contains("KVM: unavailable: "), "stdout: \(missing.stdout)")
    }
}
