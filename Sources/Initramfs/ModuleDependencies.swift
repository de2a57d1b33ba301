/// A kernel module as modules.dep lists it.
public struct KernelModule: Sendable, Equatable {
    /// The canonical name: the file name without its suffix, dashes turned into underscores ("virtio_rng").
    public let name: String
    /// The file, relative to the modules directory ("kernel/drivers/virtio/virtio.ko").
    public let path: String
    /// The files of the modules it needs directly, relative to the modules directory.
    public let dependencies: [String]

    /// Whether the file is compressed (.ko.xz, .ko.zst, .ko.gz).
    public var isCompressed: Bool { !path.hasSuffix(".ko") }
}

/// The modules a selection resolved to.
public struct ModuleSelection: Sendable, Equatable {
    /// The requested modules and everything they need, each after all of its dependencies.
    public let loadOrder: [KernelModule]
    /// Requested names this kernel does not have.
    public let skipped: [String]
}

/// The dependency graph of a kernel's modules, read from `/lib/modules/VERSION/modules.dep`.
///
/// Each line is `path: dependency-path ...`; blank lines and lines starting with `#` are ignored.
/// Names match ignoring the dash/underscore difference, as modprobe does.
public struct ModuleDependencies: Sendable, Equatable {
    /// Every module, in file order.
    public let modules: [KernelModule]
    private let byName: [String: Int]
    private let byPath: [String: Int]

    private static let suffixes = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]

    /// Parses the text of a modules.dep file.
    public init(parsing text: String) throws(InitramfsError) {
        var modules: [KernelModule] = []
        var byName: [String: Int] = [:]
        var byPath: [String: Int] = [:]
        for (number, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = rawLine.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") { continue }
            func malformed(_ reason: String) -> InitramfsError {
                .malformedDependencyLine(line: number + 1, text: String(line), reason: reason)
            }
            guard let colon = line.firstIndex(of: ":") else { throw malformed("expected 'path: dependencies'") }
            let path = String(line[..<colon].trimmingWhitespace())
            let dependencies = line[line.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\t" })
                .map(String.init)
            for file in [path] + dependencies {
                if file.isEmpty { throw malformed("empty module path") }
                if file.contains(where: { $0 == " " || $0 == "\t" }) { throw malformed("'\(file)' contains a blank") }
                if file.hasPrefix("/") { throw malformed("'\(file)' is not relative to the modules directory") }
                if Self.moduleStem(Substring(file)) == nil { throw malformed("'\(file)' is not a .ko module file") }
            }
            guard byPath[path] == nil else { throw malformed("'\(path)' is listed twice") }
            let module = KernelModule(name: Self.canonicalName(path), path: path, dependencies: dependencies)
            byPath[path] = modules.count
            if byName[module.name] == nil { byName[module.name] = modules.count }
            modules.append(module)
        }
        self.modules = modules
        self.byName = byName
        self.byPath = byPath
    }

    /// Reads and parses `directory/modules.dep`.
    public init(directory: String) throws(InitramfsError) {
        let bytes = try FileIO.read("\(directory)/modules.dep")
        try self.init(parsing: String(decoding: bytes, as: UTF8.self))
    }

    /// The canonical module name of a name or file: "crc32c-intel", "crc32c_intel.ko" and
    /// "kernel/arch/x86/crypto/crc32c-intel.ko" all give "crc32c_intel".
    public static func canonicalName(_ nameOrPath: String) -> String {
        let base = nameOrPath.split(separator: "/").last ?? ""
        return (moduleStem(base) ?? base).replacingDashes()
    }

    /// The file name without its module suffix, or nil when it has none.
    private static func moduleStem(_ file: Substring) -> Substring? {
        guard let suffix = suffixes.first(where: { file.hasSuffix($0) }), file.count > suffix.count else { return nil }
        return file.dropLast(suffix.count)
    }

    /// The module called `name` (dashes and underscores are equivalent), if this kernel has it.
    public func module(named name: String) -> KernelModule? {
        guard let at = byName[Self.canonicalName(name)] else { return nil }
        return modules[at]
    }

    /// The modules `names` need, in an order that loads every dependency before its dependents. Names this
    /// kernel lacks are skipped; it is an error when nothing is left, when a dependency has no entry of its
    /// own, or when dependencies form a cycle.
    public func resolve(_ names: [String]) throws(InitramfsError) -> ModuleSelection {
        var resolver = Resolver(graph: self)
        var skipped: [String] = []
        for name in names {
            guard let module = module(named: name) else {
                skipped.append(name)
                continue
            }
            try resolver.visit(module, chain: [])
        }
        guard !resolver.order.isEmpty else { throw .noModulesResolved(names) }
        return ModuleSelection(loadOrder: resolver.order, skipped: skipped)
    }

    /// Depth-first post-order walk that detects cycles.
    private struct Resolver {
        let graph: ModuleDependencies
        var order: [KernelModule] = []
        var finished: Set<String> = []
        var inProgress: Set<String> = []

        mutating func visit(_ module: KernelModule, chain: [String]) throws(InitramfsError) {
            if finished.contains(module.path) { return }
            let chain = chain + [module.name]
            guard inProgress.insert(module.path).inserted else {
                throw .dependencyCycle(Array(chain[chain.firstIndex(of: module.name)!...]))
            }
            for dependency in module.dependencies {
                guard let at = graph.byPath[dependency] else {
                    throw .missingDependency(module: module.name, dependency: dependency)
                }
                try visit(graph.modules[at], chain: chain)
            }
            inProgress.remove(module.path)
            finished.insert(module.path)
            order.append(module)
        }
    }
}

extension Substring {
    /// Without leading and trailing spaces and tabs.
    func trimmingWhitespace() -> Substring {
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isBlank($0) }), let last = lastIndex(where: { !isBlank($0) }) else {
            return self[endIndex...]
        }
        return self[first...last]
    }

    /// With every "-" turned into "_".
    func replacingDashes() -> String {
        String(map { $0 == "-" ? "_" : $0 })
    }
}
