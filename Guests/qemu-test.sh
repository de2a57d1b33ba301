#!/bin/sh
# Boots each test guest under QEMU microvm + KVM and checks its output and exit status.
# QEMU's isa-debug-exit turns guest status S into process status (S << 1) | 1.
# Usage: ./qemu-test.sh            (from Guests/, after make)
# Env:   QEMU (default qemu-system-x86_64), QEMU_CPU (e.g. "host,-arch-capabilities"; default:
#        QEMU's default CPU model), BUILD (default build).
set -u
cd "$(dirname "$0")"
QEMU=${QEMU:-qemu-system-x86_64}
BUILD=${BUILD:-build}
CPU_ARGS=""
[ -n "${QEMU_CPU:-}" ] && CPU_ARGS="-cpu $QEMU_CPU"
fail=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# run NAME TIMEOUT EXPECTED_STATUS EXPECTED_TEXT APPEND [extra qemu args...]
run() {
    name=$1 tmo=$2 want=$3 text=$4 append=$5
    shift 5
    timeout "$tmo" $QEMU -M "${MACHINE:-microvm}" ${MACHINE_ARGS:-} -enable-kvm $CPU_ARGS -m 256M -nographic -no-reboot \
        -device isa-debug-exit,iobase=0x501,iosize=1 -kernel "$BUILD/$name.elf" \
        -append "$append" "$@" >"$out" 2>&1 </dev/null
    rc=$?
    if [ "$rc" = "$want" ] && grep -q -- "$text" "$out"; then
        echo "PASS $name [$append] $* (status $rc)"
    else
        echo "FAIL $name [$append] $* (status $rc, wanted $want and '$text'):"
        sed 's/^/    /' "$out" | tr -d '\r' | head -20
        fail=1
    fi
}

run hello    10 1   "^Hello from a Tern test guest" ""
run hello    10 1   "^cmdline: foo=bar x=1" "foo=bar x=1"
run smp      20 1   "smp: all 1 vCPUs checked in" ""
run smp      20 1   "smp: all 2 vCPUs checked in" "" -smp 2
run smp      20 1   "smp: all 4 vCPUs checked in" "" -smp 4
run smp      20 1   "smp: all 4 vCPUs checked in" "cpus=4" -smp 4
run smp      30 3   "smp: only 1 of 2 vCPUs checked in" "cpus=2" -smp 1
run memtouch 20 1   "memtouch: wrote and verified 16 MiB checksum 0xef5b2eb7fe7a6d74" ""
run memtouch 20 1   "memtouch: wrote and verified 64 MiB checksum 0x5d2b5d6cb684194d" "mib=64"
run memtouch 20 5   "memtouch: 300 MiB does not fit in guest RAM" "mib=300"
run crash    10 253 "guest: exception 6 (error 0x0) at RIP 0x[0-9a-f]* on cpu 0" "mode=ud2-user"
# rng: QEMU 7.2 microvm makes virtio-mmio transports legacy (Version 1) unless
# force-legacy=false, puts the first device in the last slot (23, 0xfeb02e00), and does not
# append virtio_mmio.device= to a PVH kernel's cmdline, so we pass the entry ourselves.
RNG_DEV="-global virtio-mmio.force-legacy=false -device virtio-rng-device"
RNG_CL="virtio_mmio.device=512@0xfeb02e00:39"
run rng      10 1   "^rng: got 256 random bytes from virtio-rng (virtio-mmio at 0xfeb02e00)" "$RNG_CL" $RNG_DEV
run rng      10 7   "^rng: no virtio-rng device" ""
run rng      10 7   "^rng: no virtio-rng device" "$RNG_CL"
run rng      10 7   "legacy virtio-rng (virtio-mmio at 0xfeb02e00)" "$RNG_CL" -device virtio-rng-device
# Hostile modes: QEMU bounce-buffers (and discards) DMA outside RAM, so the bogus address
# "succeeds" (status 0xf); a self-looping chain gives "Looped descriptor" and NEEDS_RESET.
run rng      10 1   "^rng: device status 0x" "$RNG_CL mode=bad-desc-oob" $RNG_DEV
run rng      10 1   "^rng: device status 0x4f" "$RNG_CL mode=bad-desc-loop" $RNG_DEV
# blk: virtio-blk on a raw file (same microvm quirks as rng). The default mode writes the
# pattern; a second boot verifies it persisted; bench writes keep the pattern valid.
DISK=$(mktemp)
trap 'rm -f "$out" "$DISK"' EXIT
truncate -s 64M "$DISK"
BLK_DEV="-global virtio-mmio.force-legacy=false -drive id=d0,file=$DISK,format=raw,if=none"
BLK_SER="-device virtio-blk-device,drive=d0,serial=tern0"
run blk      10 1   "^blk: wrote and verified 521 sectors on a 64 MiB disk (serial \"tern0\")" "$RNG_CL" $BLK_DEV $BLK_SER
run blk      10 1   "^blk: pattern verified on 521 sectors" "$RNG_CL mode=check-pattern" $BLK_DEV $BLK_SER
run blk      10 3   "^blk: mismatch in sector 0 at byte 0" "$RNG_CL mode=check-pattern seed=2" $BLK_DEV $BLK_SER
run blk      10 1   "^blk: read-only disk refused the write" "$RNG_CL mode=read-only" $BLK_DEV,readonly=on $BLK_SER
run blk      10 3   "^blk: disk is read-only" "$RNG_CL" $BLK_DEV,readonly=on $BLK_SER
run blk      10 3   "does not offer VIRTIO_BLK_F_RO" "$RNG_CL mode=read-only" $BLK_DEV $BLK_SER
run blk      20 1   "^blk-bench: randread iops=[0-9]* randwrite iops=[0-9]* seqread MB/s=[0-9]*" "$RNG_CL mode=bench ms=200 tsc-khz=2000000" $BLK_DEV $BLK_SER
run blk      10 1   "^blk: pattern verified on 521 sectors" "$RNG_CL mode=check-pattern" $BLK_DEV $BLK_SER
run blk      10 7   "^blk: no virtio-blk device" "$RNG_CL"
run blk      10 9   "^blk: unknown mode foo" "mode=foo"
# console: virtio-console (virtio-serial-device + virtconsole port 0; same microvm quirks as
# rng). QEMU offers MULTIPORT, which the guest does not negotiate, so port 0 uses queues 0/1.
# The guest's transmitq output goes to the chardev file/FIFO, which is checked afterwards.
VC_DIR=$(mktemp -d)
trap 'rm -f "$out" "$DISK"; rm -rf "$VC_DIR"' EXIT
VC_DEV="-global virtio-mmio.force-legacy=false -device virtio-serial-device -device virtconsole,chardev=c0"
# check_vc FILE TEXT: the console output file must contain the line TEXT.
check_vc() {
    if grep -qx -- "$2" "$1"; then echo "PASS console output has '$2'"
    else echo "FAIL console output lacks '$2':"; sed 's/^/    /' "$1" | head -5; fail=1; fi
}
run console  10 1   "^console: sent" "$RNG_CL" -chardev file,id=c0,path=$VC_DIR/out $VC_DEV
check_vc "$VC_DIR/out" "console: hello over virtio-console"
# Input: a pipe chardev (FIFOs PATH.in/PATH.out); a background writer supplies one line.
mkfifo "$VC_DIR/p.in" "$VC_DIR/p.out"
timeout 15 cat "$VC_DIR/p.out" >"$VC_DIR/echo" &
vc_reader=$!
printf 'ping from host\n' >"$VC_DIR/p.in" &
vc_writer=$!
run console  10 1   "^console: echoed 15 bytes" "$RNG_CL expect-input=1" -chardev pipe,id=c0,path=$VC_DIR/p $VC_DEV
kill $vc_writer 2>/dev/null; wait $vc_reader 2>/dev/null
check_vc "$VC_DIR/echo" "console: got ping from host"
run console  10 3   "^console: no complete input line" "$RNG_CL expect-input=1 timeout=200000000" -chardev file,id=c0,path=$VC_DIR/out2 $VC_DEV
run console  10 7   "^console: no virtio-console device" "$RNG_CL"
run console  10 7   "legacy virtio-console (virtio-mmio at 0xfeb02e00)" "$RNG_CL" -chardev file,id=c0,path=$VC_DIR/out3 -device virtio-serial-device -device virtconsole,chardev=c0
# The same guests over virtio-pci: a q35 machine, whose firmware (SeaBIOS) assigns the BARs before it
# jumps to the PVH entry; modern-only devices (disable-legacy=on) have IDs 0x1040 + DeviceID.
pci() { MACHINE=q35 MACHINE_ARGS="-nic none" run "$@"; }
pci rng      20 1   "rng: got 256 random bytes from virtio-rng (virtio-pci at 00:0[0-9a-f].0)" "" -device virtio-rng-pci,disable-legacy=on
pci rng      20 7   "legacy virtio-rng (virtio-pci at" "" -device virtio-rng-pci
pci blk      20 1   "^blk: wrote and verified 521 sectors on a 64 MiB disk (serial \"tern0\")" "seed=3" -drive id=d0,file=$DISK,format=raw,if=none -device virtio-blk-pci,drive=d0,serial=tern0,disable-legacy=on
pci blk      20 1   "^blk: pattern verified on 521 sectors" "mode=check-pattern seed=3" -drive id=d0,file=$DISK,format=raw,if=none -device virtio-blk-pci,drive=d0,serial=tern0,disable-legacy=on
pci console  20 1   "^console: sent" "" -chardev file,id=c0,path=$VC_DIR/pci -device virtio-serial-pci,disable-legacy=on -device virtconsole,chardev=c0
check_vc "$VC_DIR/pci" "console: hello over virtio-console"
# net: QEMU's user-mode network (slirp, as Tern's --net user) answers the guest's ARP and ping.
run net      20 1   "^net: ok: ARP and ping to 10.0.2.2" "$RNG_CL" -global virtio-mmio.force-legacy=false -netdev user,id=n0 -device virtio-net-device,netdev=n0
pci net      20 1   "net: ok: ARP and ping to 10.0.2.2" "" -netdev user,id=n0 -device virtio-net-pci,netdev=n0,disable-legacy=on
# Triple fault: KVM_EXIT_SHUTDOWN; with -no-reboot QEMU exits 0.
run crash    10 0   "crash: mode triple" "mode=triple"
# Emulation failures: QEMU prints "KVM internal error" and then stays paused (timeout: 124).
# On hosts that run ring 0 natively, int3 instead reaches the guest's IDT (status 253).
run crash    5  124 "KVM internal error" "mode=mmio-exec"
timeout 5 $QEMU -M microvm -enable-kvm $CPU_ARGS -m 256M -nographic -no-reboot \
    -device isa-debug-exit,iobase=0x501,iosize=1 -kernel "$BUILD/crash.elf" -append mode=int3 \
    >"$out" 2>&1 </dev/null
rc=$?
if { [ "$rc" = 124 ] && grep -q "KVM internal error" "$out"; } ||
   { [ "$rc" = 253 ] && grep -q "guest: exception 3 " "$out"; }; then
    echo "PASS crash [mode=int3] (status $rc)"
else
    echo "FAIL crash [mode=int3] (status $rc)"; tr -d '\r' <"$out" | head -20; fail=1
fi
exit $fail
