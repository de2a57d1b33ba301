import ArgumentParser
import Qcow2

struct ImageResize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resize", abstract: "Change an image's virtual size.")
    @Flag(name: .long, help: "Allow shrinking (data past the new end is lost).") var shrink = false
    @Option(name: .customShort("f"), help: "Image format (probed if omitted).") var format: ImageFormat?
    @Argument(help: "Image file.") var file: String
    @Argument(help: "New size, or +SIZE / -SIZE relative to the current one.") var size: String

    func run() throws {
        try withImage(file) { () throws(DiskError) in
            let dev = try openImage(path: file, format: format, writable: true)
            let cur = dev.virtualSize
            var s = size
            var sign = 0
            if s.hasPrefix("+") { sign = 1; s.removeFirst() } else if s.hasPrefix("-") { sign = -1; s.removeFirst() }
            guard let v = parseImageSize(s) else { throw DiskError.invalidArgument("bad size '\(size)'") }
            let target = sign == 0 ? v : sign > 0 ? cur + v : (v > cur ? 0 : cur - v)
            if target < cur && !shrink { throw DiskError.invalidArgument("shrinking needs --shrink") }
            if let q = dev as? Qcow2Image { try q.resize(to: target) }
            else if let r = dev as? RawBackend { try r.file.truncate(target) }
            try dev.flush()
        }
        print("Image resized.")
    }
}
