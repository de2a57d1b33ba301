import Glibc
import Testing

/// `tern run` on a terminal: raw mode while the guest runs, Ctrl-A x to quit, the terminal restored afterwards.
@Suite(.serialized, .timeLimit(.minutes(3))) struct ConsoleTests {
    @Test func escapeSequenceQuitsAndRestoresTheTerminal() throws {
        let master = open("/dev/ptmx", O_RDWR | O_NOCTTY)
        try #require(master >= 0)
        defer { close(master) }
        // TIOCSPTLCK (unlock the pair) and TIOCGPTN (its number); Swift does not import the _IOW/_IOR macros.
        var unlock: Int32 = 0
        var number: UInt32 = 0
        try #require(ioctl(master, 0x4004_5431, &unlock) == 0 && ioctl(master, 0x8004_5430, &number) == 0)
        let slavePath = "/dev/pts/\(number)"
        let slave = open(slavePath, O_RDWR | O_NOCTTY)
        try #require(slave >= 0)
        defer { close(slave) }
        var before = termios()
        try #require(tcgetattr(slave, &before) == 0)

        // smp waiting for a third vCPU that never comes keeps the guest running for several seconds.
        let arguments = [try Repository.ternBinary(), "run", "--cpus", "2", "--kernel", try Repository.guest("smp"), "--cmdline", "cpus=3"]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for target in Int32(0)...2 { posix_spawn_file_actions_adddup2(&actions, slave, target) }
        posix_spawn_file_actions_addclose(&actions, master)
        var argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        try #require(posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ) == 0)

        // Wait for the guest's first line, then type Ctrl-A x.
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = time(nil) + 20
        while !String(decoding: output, as: UTF8.self).contains("expecting 3 vCPUs") && time(nil) < deadline {
            var descriptor = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, 200) > 0 {
                let count = read(master, &buffer, buffer.count)
                if count > 0 { output.append(contentsOf: buffer[0..<count]) }
            }
        }
        #expect(String(decoding: output, as: UTF8.self).contains("expecting 3 vCPUs"))
        var during = termios()
        tcgetattr(slave, &during)
        #expect(during.c_lflag & tcflag_t(ICANON | ECHO) == 0, "the terminal is in raw mode while the guest runs")
        let keys: [UInt8] = [0x01, UInt8(ascii: "x")]
        #expect(write(master, keys, keys.count) == 2)

        var status: Int32 = 0
        var waited: pid_t = 0
        for _ in 0..<400 {
            waited = waitpid(pid, &status, WNOHANG)
            if waited == pid { break }
            usleep(50_000)
        }
        if waited != pid {
            kill(pid, SIGKILL)
            waitpid(pid, &status, 0)
            Issue.record("tern did not stop after Ctrl-A x")
            return
        }
        #expect((status >> 8) & 0xFF == 130)
        var after = termios()
        tcgetattr(slave, &after)
        #expect(after.c_lflag == before.c_lflag)
        #expect(after.c_iflag == before.c_iflag)
    }

    @Test func sigtermStopsTheVMCleanly() throws {
        let arguments = [try Repository.ternBinary(), "run", "--cpus", "2", "--console", "none", "--kernel", try Repository.guest("smp"), "--cmdline", "cpus=3"]
        var argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        try #require(posix_spawn(&pid, arguments[0], nil, nil, &argv, environ) == 0)
        usleep(500_000)
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        #expect(status & 0x7F == 0, "tern exited normally rather than dying of the signal")
        #expect((status >> 8) & 0xFF == 130)
    }
}
