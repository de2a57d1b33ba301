import ArgumentParser
import Qcow2

extension RepairMode: ExpressibleByArgument {}

struct ImageCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check a qcow2 image's metadata, as qemu-img check (exit 0 clean, 1 check failed, 2 corruption, 3 leaks only, 63 format without checks).")
    @Option(name: .long, help: "Output format: human or json.") var output: OutputFormat = .human
    @Option(name: [.customShort("r"), .long], help: "Repair leaks (free leaked clusters) or all (also refcount errors and COPIED flags).")
    var repair: RepairMode?
    @Flag(name: [.customShort("U"), .long], help: "Read the image even if another process has it open (no lock).") var forceShare = false
    @Argument(help: "Image file.") var file: String

    func run() throws {
        let checked = try withCheckedImage { () throws(DiskError) -> (first: CheckResult, final: CheckResult)? in
            let f = try PosixFile(path: file, writable: repair != nil, forceShare: forceShare)
            guard try probeFormat(f) == .qcow2 else { return nil }
            // Lenient: damage the check is there to report must not keep the image from opening.
            var o = Qcow2OpenOptions(writable: repair != nil)
            o.lenient = true
            o.forceShare = forceShare
            let img = try Qcow2Image(file: f, path: file, options: o)
            let first = try img.check(repairing: repair)
            guard first.leaksFixed > 0 || first.corruptionsFixed > 0 else { return (first, first) }
            // As qemu-img: the repaired image is checked again, and that report carries what was repaired.
            var final = try img.check(repairing: nil)
            final.leaksFixed = first.leaksFixed
            final.corruptionsFixed = first.corruptionsFixed
            return (first, final)
        }
        guard let (first, final) = checked else {
            printError("tern: \(file): This image format does not support checks")
            throw ExitCode(63)
        }
        if repair != nil && first.checkErrors > 0 {
            // As qemu-img, a repair that cannot proceed reports what it found and fails without a summary.
            for m in first.messages { printError(m) }
            printError("tern: \(file): check failed: the refcount structures must be rebuilt; repair with -r all")
            throw ExitCode(1)
        }
        if output == .json {
            print(checkJSON(final, path: file).render())
            if final.exitCode != 0 { throw ExitCode(final.exitCode) }
            return
        }
        // As qemu-img: what was found on standard error, the summary on standard output.
        for m in first.messages { printError(m) }
        if first.leaksFixed + first.corruptionsFixed > 0 {
            print("The following inconsistencies were found and repaired:\n\n    \(first.leaksFixed) leaked clusters\n    \(first.corruptionsFixed) corruptions\n\nDouble checking the fixed image now...")
            for m in final.messages { printError(m) }
        }
        if final.isClean {
            print("No errors were found on the image.")
        } else {
            if final.corruptions > 0 {
                print("\n\(final.corruptions) errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.")
            }
            if final.leaks > 0 {
                print("\n\(final.leaks) leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.")
            }
            if final.checkErrors > 0 { print("\n\(final.checkErrors) internal errors have occurred during the check.") }
        }
        if final.totalClusters != 0 && final.allocatedClusters != 0 {
            let percent = { (x: UInt64) in twoDecimals(Double(x) * 100 / Double(final.totalClusters)) }
            print("\(final.allocatedClusters)/\(final.totalClusters) = \(percent(final.allocatedClusters))% allocated, \(percent(final.fragmentedClusters))% fragmented, \(percent(final.compressedClusters))% compressed clusters")
        }
        if final.imageEndOffset > 0 { print("Image end offset: \(final.imageEndOffset)") }
        if final.exitCode != 0 { throw ExitCode(final.exitCode) }
    }
}

extension ImageCheck {
    /// Runs `body`; an image too damaged to open for checking gets one line (not the advice to check it).
    func withCheckedImage<T>(_ body: () throws(DiskError) -> T) throws -> T {
        do {
            return try body()
        } catch DiskError.corrupt(let problem) {
            printError("tern: \(file): cannot check the image: \(problem); restore it from a backup")
            throw ExitCode(1)
        } catch {
            throw imageFailure(file, error)
        }
    }
}

/// `%.2f`: a non-negative value rounded to two decimals.
func twoDecimals(_ value: Double) -> String {
    let hundredths = UInt64((value * 100).rounded())
    let fraction = hundredths % 100
    return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
}
