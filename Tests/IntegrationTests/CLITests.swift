import Testing

@Suite(.serialized, .timeLimit(.minutes(3))) struct CLITests {
    @Test func runPrintsTheGuestsOutputAndExitsWithItsStatus() throws {
        let result = try runProcess([Repository.ternBinary(), "run", "--kernel", Repository.guest("hello")])
        #expect(result.status == 0)
        #expect(result.stdout.contains("Hello from a Tern test guest"))
    }

    @Test func runWithPinnedVCPUs() throws {
        let result = try runProcess([Repository.ternBinary(), "run", "--cpus", "2", "--pin", "0,1", "-v", "--kernel", Repository.guest("smp")])
        #expect(result.status == 0)
        #expect(result.stderr.contains("vCPU 0 (thread"))
        #expect(result.stderr.contains("pinned to host cores 0"))
        #expect(result.stderr.contains("pinned to host cores 1"))
    }

    @Test func configFileGivesTheSameSettings() throws {
        let path = "/tmp/tern-cli-config-\(UInt32.random(in: 0...UInt32.max)).json"
        let json = #"{"kernel": "\#(try Repository.guest("memtouch"))", "cmdline": "mib=4", "memory": "64M", "console": "stdio"}"#
        try #require(writeFile(path, json))
        defer { _ = unlinkFile(path) }
        let result = try runProcess([Repository.ternBinary(), "run", "--config", path])
        #expect(result.status == 0)
        #expect(result.stdout.contains("wrote and verified 4 MiB"))
    }

    @Test func crashingGuestGetsAReportAndStatusOne() throws {
        let result = try runProcess([Repository.ternBinary(), "run", "--kernel", Repository.guest("crash"), "--cmdline", "mode=triple"])
        #expect(result.status == 1)
        #expect(result.stderr.hasPrefix("tern: vCPU 0 stopped: KVM_EXIT_SHUTDOWN (triple fault)"))
    }

    @Test(arguments: [
        (["run"], "no kernel given"),
        (["run", "--kernel", "k", "--memory", "lots"], "memory size 'lots'"),
        (["run", "--kernel", "k", "--cpus", "2", "--pin", "0"], "has 1 entries for 2 vCPUs"),
        (["run", "--kernel", "k", "--pin", "zero"], "pin list 'zero'"),
        (["run", "--kernel", "k", "--console", "tty"], "console 'tty'"),
        (["run", "--config", "/nonexistent.json"], "/nonexistent.json: No such file"),
        (["run", "--bogus"], "Unknown option"),
    ])
    func usageErrorsExitTwoWithOneLine(arguments: [String], message: String) throws {
        let result = try runProcess([Repository.ternBinary()] + arguments)
        #expect(result.status == 2)
        #expect(result.stderr.contains(message), "stderr: \(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1)
    }

    @Test func badKernelExitsOneNamingTheFile() throws {
        let path = "/tmp/tern-cli-text-\(UInt32.random(in: 0...UInt32.max))"
        try #require(writeFile(path, String(repeating: "this is not a kernel\n", count: 100)))
        defer { _ = unlinkFile(path) }
        let result = try runProcess([Repository.ternBinary(), "run", "--kernel", path])
        #expect(result.status == 1)
        #expect(result.stderr == "tern: \(path): neither an ELF64 image nor a bzImage; Tern boots ELF vmlinux (PVH or 64-bit entry) and bzImage kernels\n")
    }

    @Test func version() throws {
        let result = try runProcess([Repository.ternBinary(), "version"])
        #expect(result.status == 0)
        #expect(result.stdout.hasPrefix("tern "))
    }
}
