/// The `/init` script: a busybox sh program that prepares the guest, runs one command and hands its exit
/// status to the host through the debug-exit port.
public enum InitScript {
    /// The I/O port whose byte ends a Tern VM with that status (QEMU's isa-debug-exit at 0x501).
    public static let debugExitPort = 0x501

    /// The script for kernel `kernelVersion` that loads `modulePaths` (relative to
    /// /lib/modules/`kernelVersion`) in the order given.
    public static func render(kernelVersion: String, modulePaths: [String]) -> String {
        let modules = modulePaths.map { " \\\n\t\(quoted($0))" }.joined()
        return """
            #!/bin/sh
            # Written by 'tern initramfs create'. Linux passes the words after ' -- ' on its command line
            # to init as arguments: run them as one command, or start a shell when there are none, then
            # report the exit status on the console and write it to I/O port 0x\(String(debugExitPort, radix: 16)).
            export PATH=/bin
            mount -t proc proc /proc
            mount -t sysfs sysfs /sys
            mount -t devtmpfs devtmpfs /dev || echo "tern-init: devtmpfs unavailable, using the static /dev nodes"
            if (exec </dev/console) 2>/dev/null; then
            \texec </dev/console >/dev/console 2>&1
            fi
            moddir=\(quoted("/lib/modules/\(kernelVersion)"))
            for module in\(modules)
            do
            \tinsmod "$moddir/$module" || echo "tern-init: could not load $module"
            done
            echo "tern-init: Linux $(uname -r) ready, running: ${*:-sh}"
            if [ $# -eq 0 ]; then
            \tsetsid cttyhack sh
            else
            \t("$@")
            fi
            status=$?
            echo "tern-init: exit status $status"
            sync
            stty "$(stty -g)" 2>/dev/null # returns once the console has sent everything
            printf "\\\\$(printf %03o "$status")" | dd of=/dev/port bs=1 seek=\(debugExitPort) count=1 conv=notrunc 2>/dev/null
            echo "tern-init: could not write to port 0x\(String(debugExitPort, radix: 16)); rebooting"
            reboot -f
            poweroff -f

            """
    }

    /// `text` as one single-quoted shell word.
    static func quoted(_ text: String) -> String {
        "'" + text.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
    }
}
