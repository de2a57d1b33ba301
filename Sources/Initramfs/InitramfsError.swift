#if canImport(Glibc)
import Glibc
#endif

/// Why an initramfs could not be built. `description` names the problem, `fix` says what to do about it.
public enum InitramfsError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A system call on `path` failed with `errno`.
    case io(path: String, operation: String, errno: Int32)
    /// A path cannot go into a cpio archive as given.
    case invalidArchivePath(String, reason: String)
    /// A member is larger than the 4 GiB a newc header can describe.
    case fileTooLarge(String)
    /// A line of modules.dep is not `path: dependency ...`.
    case malformedDependencyLine(line: Int, text: String, reason: String)
    /// `module` depends on `dependency`, which has no entry of its own in modules.dep.
    case missingDependency(module: String, dependency: String)
    /// Modules that depend on each other in a loop, the first repeated at the end.
    case dependencyCycle([String])
    /// None of the requested modules exists in this kernel.
    case noModulesResolved([String])
    /// `root` holds no directory with a modules.dep.
    case noKernelModules(root: String)
    /// `root/version` has no modules.dep; `available` lists the versions that do.
    case kernelNotFound(version: String, root: String, available: [String])
    /// A modules directory given directly has no modules.dep.
    case missingModulesDep(directory: String)
    /// A chosen module file is compressed (.ko.xz, .ko.zst, .ko.gz); only plain .ko files are supported.
    case compressedModule(String)
    /// The busybox binary is missing or not a static x86-64 executable.
    case busyboxUnusable(path: String, reason: String)

    public var description: String {
        switch self {
        case .io(let path, let operation, let code):
            return "\(path): \(operation) failed: \(String(cString: strerror(code)))"
        case .invalidArchivePath(let path, let reason):
            return "cannot archive '\(path)': \(reason)"
        case .fileTooLarge(let path):
            return "\(path) is larger than the 4 GiB a cpio newc member can hold"
        case .malformedDependencyLine(let line, let text, let reason):
            return "modules.dep line \(line): \(reason): '\(text)'"
        case .missingDependency(let module, let dependency):
            return "modules.dep: \(module) depends on \(dependency), which has no entry of its own"
        case .dependencyCycle(let chain):
            return "modules.dep has a dependency cycle: \(chain.joined(separator: " -> "))"
        case .noModulesResolved(let names):
            return "none of the requested modules (\(names.joined(separator: ", "))) exists in this kernel"
        case .noKernelModules(let root):
            return "no kernel modules under \(root) (no VERSION/modules.dep)"
        case .kernelNotFound(let version, let root, let available):
            let list = available.isEmpty ? "none" : available.joined(separator: ", ")
            return "no kernel \(version) under \(root) (installed: \(list))"
        case .missingModulesDep(let directory):
            return "\(directory) has no modules.dep"
        case .compressedModule(let path):
            return "\(path) is compressed; only plain .ko modules are supported"
        case .busyboxUnusable(let path, let reason):
            return "\(path) is not a static busybox: \(reason)"
        }
    }

    /// What the user can do about it.
    public var fix: String {
        switch self {
        case .io: return "check the path, permissions and free space"
        case .invalidArchivePath, .fileTooLarge: return "use relative paths without '..' and files under 4 GiB"
        case .malformedDependencyLine, .missingDependency, .dependencyCycle:
            return "regenerate it with depmod"
        case .noModulesResolved: return "check the module names with 'ls /lib/modules/VERSION/kernel'"
        case .noKernelModules, .kernelNotFound:
            return "install a kernel (apt-get install linux-image-amd64) or pass --modules DIR"
        case .missingModulesDep: return "pass /lib/modules/VERSION, or run depmod for that kernel"
        case .compressedModule:
            return "decompress the modules (unxz/unzstd) and run depmod, or use a kernel with plain .ko modules"
        case .busyboxUnusable: return "install busybox-static (apt-get install busybox-static) or pass --busybox PATH"
        }
    }
}
