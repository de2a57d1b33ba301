import ArgumentParser
import Qcow2

struct ImageBitmap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bitmap", abstract: "Add, remove, clear, enable, disable or merge a qcow2 image's persistent dirty bitmaps.",
        discussion: """
            Usage, as qemu-img bitmap: tern image bitmap (--add [-g GRANULARITY] | --remove | --clear | --enable | \
            --disable | --merge SOURCE [-b SOURCE_FILE [-F SOURCE_FMT]])... [-f FMT] FILE BITMAP. \
            The operations run in the order given. `tern image info` lists the bitmaps.
            """)
    @Argument(parsing: .captureForPassthrough, help: "Operations, options, the image and the bitmap name.") var arguments: [String] = []

    func run() throws {
        var actions: [BitmapAction] = []
        var positional: [String] = []
        var granularity: UInt64?
        var sourceFile: String?, sourceFormatGiven = false
        var words = arguments.makeIterator()
        func value(_ flag: String) -> String {
            guard let v = words.next() else { usageFailure("\(flag) needs a value", verb: "bitmap") }
            return v
        }
        while let word = words.next() {
            switch word {
            case "--add": actions.append(.add(granularity: nil))
            case "--remove": actions.append(.remove)
            case "--clear": actions.append(.clear)
            case "--enable": actions.append(.enable)
            case "--disable": actions.append(.disable)
            case "--merge": actions.append(.merge(source: value(word), sourcePath: nil))
            case "-g", "--granularity":
                guard let g = parseImageSize(value(word)) else { usageFailure("invalid granularity", verb: "bitmap") }
                granularity = g
            case "-b", "--source-file": sourceFile = value(word)
            case "-F", "--source-format":
                guard value(word) == "qcow2" else { usageFailure("bitmaps live in qcow2 images only", verb: "bitmap") }
                sourceFormatGiven = true
            case "-f":
                guard value(word) == "qcow2" else { usageFailure("bitmaps live in qcow2 images only", verb: "bitmap") }
            default:
                if word.hasPrefix("-") && word.count > 1 { usageFailure("unknown option \(word)", verb: "bitmap") }
                positional.append(word)
            }
        }
        if actions.isEmpty { usageFailure("give at least one of --add, --remove, --clear, --enable, --disable or --merge", verb: "bitmap") }
        if granularity != nil && !actions.contains(.add(granularity: nil)) { usageFailure("-g goes with --add", verb: "bitmap") }
        if sourceFormatGiven && sourceFile == nil { usageFailure("-F goes with -b", verb: "bitmap") }
        let merges = actions.contains { if case .merge = $0 { return true }; return false }
        if sourceFile != nil && !merges { usageFailure("-b goes with --merge", verb: "bitmap") }
        guard positional.count == 2 else { usageFailure("give the image and the bitmap name", verb: "bitmap") }
        let resolved = actions.map { (a: BitmapAction) -> BitmapAction in
            switch a {
            case .add: return .add(granularity: granularity)
            case .merge(let source, _): return .merge(source: source, sourcePath: sourceFile)
            default: return a
            }
        }
        let file = positional[0], name = positional[1]
        try withImage(file) { () throws(DiskError) in try editBitmaps(path: file, name: name, resolved) }
    }
}
