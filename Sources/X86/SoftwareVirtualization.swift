/// What a guest is kept from on a host whose KVM runs guest ring 0 in an instruction emulator (kvm_pvm, on machines
/// without VMX or SVM), so that its kernel takes the generic code paths the emulator can run.
///
/// Probed on kvm_pvm: in guest ring 0 the emulator runs the general-purpose instructions, RDRAND/RDSEED,
/// FSGSBASE, SWAPGS, CLFLUSH(OPT), the SSE moves (`movdqa`, `movdqu`, `movaps`, `movups`, `movntdq`), `fxsave` and
/// `fxrstor`; it stops on every other SSE instruction (`movd`, `pxor`, `pshufb`, `pclmulqdq`, `aesenc`, ...), on
/// `crc32`, `popcnt`, BMI1/BMI2, ADX, `cmpxchg16b`, `invpcid`, `clwb`, `rdtscp`, `xgetbv` and the XSAVE family.
public enum SoftwareVirtualization {
    /// The features whose instructions the emulator cannot run, withheld from the guest's CPUID.
    public static let withheldFeatures: [CPUFeature] = [
        CPUFeature("pni", leaf: 1, .ecx, bit: 0),
        CPUFeature("pclmulqdq", leaf: 1, .ecx, bit: 1),
        CPUFeature("ssse3", leaf: 1, .ecx, bit: 9),
        CPUFeature("fma", leaf: 1, .ecx, bit: 12, needsExtendedState: true),
        CPUFeature("cx16", leaf: 1, .ecx, bit: 13),
        CPUFeature("sse4_1", leaf: 1, .ecx, bit: 19),
        CPUFeature("sse4_2", leaf: 1, .ecx, bit: 20),
        CPUFeature("movbe", leaf: 1, .ecx, bit: 22),
        CPUFeature("popcnt", leaf: 1, .ecx, bit: 23),
        CPUFeature("aes", leaf: 1, .ecx, bit: 25),
        CPUFeature("xsave", leaf: 1, .ecx, bit: 26),
        CPUFeature("osxsave", leaf: 1, .ecx, bit: 27, needsExtendedState: true),
        CPUFeature("avx", leaf: 1, .ecx, bit: 28, needsExtendedState: true),
        CPUFeature("f16c", leaf: 1, .ecx, bit: 29, needsExtendedState: true),
        CPUFeature("bmi1", leaf: 7, .ebx, bit: 3),
        CPUFeature("avx2", leaf: 7, .ebx, bit: 5, needsExtendedState: true),
        CPUFeature("bmi2", leaf: 7, .ebx, bit: 8),
        CPUFeature("invpcid", leaf: 7, .ebx, bit: 10),
        CPUFeature("avx512f", leaf: 7, .ebx, bit: 16, needsExtendedState: true),
        CPUFeature("avx512dq", leaf: 7, .ebx, bit: 17, needsExtendedState: true),
        CPUFeature("adx", leaf: 7, .ebx, bit: 19),
        CPUFeature("avx512ifma", leaf: 7, .ebx, bit: 21, needsExtendedState: true),
        CPUFeature("clwb", leaf: 7, .ebx, bit: 24),
        CPUFeature("avx512pf", leaf: 7, .ebx, bit: 26, needsExtendedState: true),
        CPUFeature("avx512er", leaf: 7, .ebx, bit: 27, needsExtendedState: true),
        CPUFeature("avx512cd", leaf: 7, .ebx, bit: 28, needsExtendedState: true),
        CPUFeature("sha_ni", leaf: 7, .ebx, bit: 29),
        CPUFeature("avx512bw", leaf: 7, .ebx, bit: 30, needsExtendedState: true),
        CPUFeature("avx512vl", leaf: 7, .ebx, bit: 31, needsExtendedState: true),
        CPUFeature("avx512vbmi", leaf: 7, .ecx, bit: 1, needsExtendedState: true),
        CPUFeature("avx512_vbmi2", leaf: 7, .ecx, bit: 6, needsExtendedState: true),
        CPUFeature("gfni", leaf: 7, .ecx, bit: 8),
        CPUFeature("vaes", leaf: 7, .ecx, bit: 9, needsExtendedState: true),
        CPUFeature("vpclmulqdq", leaf: 7, .ecx, bit: 10, needsExtendedState: true),
        CPUFeature("avx512_vnni", leaf: 7, .ecx, bit: 11, needsExtendedState: true),
        CPUFeature("avx512_bitalg", leaf: 7, .ecx, bit: 12, needsExtendedState: true),
        CPUFeature("avx512_vpopcntdq", leaf: 7, .ecx, bit: 14, needsExtendedState: true),
        CPUFeature("avx512_4vnniw", leaf: 7, .edx, bit: 2, needsExtendedState: true),
        CPUFeature("avx512_4fmaps", leaf: 7, .edx, bit: 3, needsExtendedState: true),
        CPUFeature("avx512_vp2intersect", leaf: 7, .edx, bit: 8, needsExtendedState: true),
        CPUFeature("avx512_fp16", leaf: 7, .edx, bit: 23, needsExtendedState: true),
        CPUFeature("avx_vnni", leaf: 7, subleaf: 1, .eax, bit: 4, needsExtendedState: true),
        CPUFeature("avx512_bf16", leaf: 7, subleaf: 1, .eax, bit: 5, needsExtendedState: true),
        CPUFeature("sse4a", leaf: 0x8000_0001, .ecx, bit: 6),
        CPUFeature("xop", leaf: 0x8000_0001, .ecx, bit: 11, needsExtendedState: true),
        CPUFeature("fma4", leaf: 0x8000_0001, .ecx, bit: 16, needsExtendedState: true),
        CPUFeature("tbm", leaf: 0x8000_0001, .ecx, bit: 21),
        CPUFeature("rdtscp", leaf: 0x8000_0001, .edx, bit: 27),
    ]

    /// Kernel parameters for Linux guests on these hosts only. Only key=value parameters: Linux hands bare words it
    /// does not know (`noxsave` is one) to init as arguments.
    ///
    /// - `clearcpuid=` keeps the kernel off the withheld instructions. Withholding them from CPUID is not enough:
    ///   kvm_pvm reports the host's own CPUID.1 ECX and CPUID.7 features whatever KVM_SET_CPUID2 sets. It names the
    ///   features by Linux's numbers (which older kernels take too, unlike names) in the 127 characters Linux reads
    ///   of it; clearing XSAVE makes Linux drop everything that needs its state (AVX and up) by itself.
    /// - `watchdog_thresh=0`, `sysctl.kernel.hung_task_timeout_secs=0` and `rcupdate.rcu_cpu_stall_suppress=1` turn
    ///   off the soft-lockup, hung-task and RCU-stall reports: under emulation the boot's long initcalls (ftrace's
    ///   and the trace events' set-up, the BTF check) trip them, and each false report costs seconds of emulated
    ///   stack unwinding and console output.
    /// - `cryptomgr.notests=1` skips the self-tests of the built-in crypto algorithms (RSA and Diffie-Hellman among
    ///   them: big-number arithmetic, run at about 2 million instructions/s). Users of an algorithm wait 60 s at
    ///   most for its test: under emulation the compiled-in X.509 certificate failed to load (-ETIMEDOUT) and the
    ///   CTR-KDF self-test could not get hmac(sha256). Linux ignores the parameter in FIPS mode.
    public static let linuxParameters: [String] = {
        let numbers = withheldFeatures.filter { !$0.needsExtendedState }.compactMap(\.linuxNumber)
        return ["clearcpuid=" + numbers.map(String.init).joined(separator: ","),
                "watchdog_thresh=0", "sysctl.kernel.hung_task_timeout_secs=0", "rcupdate.rcu_cpu_stall_suppress=1",
                "cryptomgr.notests=1"]
    }()
}
