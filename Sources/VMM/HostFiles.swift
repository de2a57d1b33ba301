import BootLoader
import Glibc

/// Checks on the host files a VM reads or writes, made before anything opens them: opening a FIFO blocks until
/// another process opens its other end, so a VM given one would hang before it ever started.
public enum HostFiles {
    /// What kinds of file an option accepts.
    enum Accepted {
        /// Regular files only (kernels, initrds, config files).
        case regular
        /// Regular files, and character devices such as /dev/null (console output).
        case output
    }

    /// Refuses `path` unless it is a kind of file `accepted` allows; the error starts with `label`, the option and
    /// the path as the user wrote them ("--kernel /boot/vmlinuz").
    static func check(_ path: String, label: String, accepts accepted: Accepted) throws(MachineError) {
        var status = stat()
        // A path that cannot be examined is left to the open that follows, which reports why.
        guard stat(path, &status) == 0 else { return }
        let kind = status.st_mode & S_IFMT
        switch (kind, accepted) {
        case (S_IFREG, _), (S_IFCHR, .output): return
        default:
            let wanted = accepted == .regular ? "a regular file" : "a regular file or a character device"
            throw MachineError("\(label): \(describe(kind)), not \(wanted); give \(wanted)")
        }
    }

    /// Names a file type as `stat` reports it.
    public static func describe(_ kind: mode_t) -> String {
        switch kind {
        case S_IFIFO: "a FIFO"
        case S_IFDIR: "a directory"
        case S_IFSOCK: "a socket"
        case S_IFBLK: "a block device"
        case S_IFCHR: "a character device"
        default: "a special file"
        }
    }

    /// Whether the kernel at `path` is Linux: a bzImage, or an ELF image carrying a note named "Linux" (every
    /// vmlinux since 5.0 has the build-salt note) or Xen's guest-OS note saying "linux". Unreadable images are not.
    static func isLinuxKernel(_ path: String) -> Bool {
        guard let file = try? MappedFile(path: path) else { return false }
        let bytes = file.bytes
        if SetupHeader.matches(bytes) { return true }
        guard bytes.count >= 64, bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46, bytes[4] == 2 else {
            return false
        }
        let headerOffset = Int(clamping: bytes.loadLittleEndian(UInt64.self, at: 32))
        let headerSize = Int(bytes.loadLittleEndian(UInt16.self, at: 54))
        let headerCount = Int(bytes.loadLittleEndian(UInt16.self, at: 56))
        guard headerSize == 56, headerOffset <= bytes.count, (bytes.count - headerOffset) / 56 >= headerCount else { return false }
        for index in 0..<headerCount {
            let header = headerOffset + index * 56
            guard bytes.loadLittleEndian(UInt32.self, at: header) == 4 else { continue }  // PT_NOTE
            let offset = Int(clamping: bytes.loadLittleEndian(UInt64.self, at: header + 8))
            let size = Int(clamping: bytes.loadLittleEndian(UInt64.self, at: header + 32))
            guard offset <= bytes.count, size <= bytes.count - offset else { continue }
            if notesNameLinux(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + size)])) { return true }
        }
        return false
    }

    /// Whether a note segment holds a "Linux" note or a Xen XEN_ELFNOTE_GUEST_OS note with "linux".
    private static func notesNameLinux(_ notes: UnsafeRawBufferPointer) -> Bool {
        var position = 0
        while notes.count - position >= 12 {
            let nameSize = Int(notes.loadLittleEndian(UInt32.self, at: position))
            let descriptionSize = Int(notes.loadLittleEndian(UInt32.self, at: position + 4))
            let type = notes.loadLittleEndian(UInt32.self, at: position + 8)
            let nameStart = position + 12
            guard nameSize <= notes.count, descriptionSize <= notes.count else { return false }
            let descriptionStart = nameStart + (nameSize + 3) & ~3
            let next = descriptionStart + (descriptionSize + 3) & ~3
            guard next <= notes.count else { return false }
            let name = String(decoding: notes[nameStart..<(nameStart + nameSize)].prefix { $0 != 0 }, as: UTF8.self)
            let description = String(decoding: notes[descriptionStart..<(descriptionStart + descriptionSize)].prefix { $0 != 0 }, as: UTF8.self)
            if name == "Linux" || (name == "Xen" && type == 6 && description == "linux") { return true }
            position = next
        }
        return false
    }
}

extension UnsafeRawBufferPointer {
    fileprivate func loadLittleEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
