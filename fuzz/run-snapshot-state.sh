#!/usr/bin/env bash
# Builds the state-file libFuzzer target (the container's header, checksum and sections, and the vCPU and KVM
# records inside them) and runs it for SECONDS (default 60).
# Usage: fuzz/run-snapshot-state.sh [SECONDS]. Seeds: a state file with two vCPUs and the KVM VM state.
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/fuzz/build"
mkdir -p "$OUT/snapshot-state-corpus" "$OUT/snapshot-state-modules"
cd "$ROOT"
printf 'module CKVM {\n    header "%s/Sources/CKVM/include/CKVM.h"\n    export *\n}\n' "$ROOT" \
    > "$OUT/snapshot-state-modules/module.modulemap"
clang -O2 -fsanitize=address -I Sources/CKVM/include -c Sources/CKVM/ckvm.c -o "$OUT/snapshot-state-ckvm.o"
swiftc -O -wmo -sanitize=fuzzer,address -parse-as-library -module-name X86 \
    -emit-module -emit-module-path "$OUT/snapshot-state-modules/X86.swiftmodule" \
    -c Sources/X86/*.swift -o "$OUT/snapshot-state-x86.o"
swiftc -O -wmo -sanitize=fuzzer,address -parse-as-library -module-name KVM -I "$OUT/snapshot-state-modules" \
    -emit-module -emit-module-path "$OUT/snapshot-state-modules/KVM.swiftmodule" \
    -c Sources/KVM/*.swift -o "$OUT/snapshot-state-kvm.o"
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name SnapshotFuzz -I "$OUT/snapshot-state-modules" \
    Sources/Snapshot/*.swift fuzz/snapshot-state/main.swift "$OUT/snapshot-state-kvm.o" "$OUT/snapshot-state-x86.o" \
    "$OUT/snapshot-state-ckvm.o" -o "$OUT/snapshot-state-fuzz"
# Seed: a state file holding two vCPU records (kernel structure sizes of x86-64 KVM) and the KVM VM record.
python3 - "$OUT/snapshot-state-corpus" <<'PY'
import struct, sys
def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF
def blob(size, fill):
    return struct.pack('<Q', size) + bytes([fill]) * size
def vcpu(seed):
    body = struct.pack('<II', 0, 2400000)
    for size in (144, 312, 4096, 392, 128, 1024, 64):
        body += blob(size, seed)
    return body + struct.pack('<Q', 2) + struct.pack('<IQ', 0x10, 1000) + struct.pack('<IQ', 0xC0000102, 7)
kvm = blob(520, 1) * 3 + blob(112, 2) + blob(48, 3)
sections = [(b'VCPU', 1, 0, vcpu(1)), (b'VCPU', 1, 1, vcpu(2)), (b'KVMV', 1, 0, kvm)]
body = b''.join(tag + struct.pack('<IIQ', version, instance, len(payload)) + payload for tag, version, instance, payload in sections)
header = b'TERNSTAT' + struct.pack('<IIQII', 1, len(sections), len(body), crc32c(body), 0)
open(sys.argv[1] + '/seed-two-vcpus', 'wb').write(header + body)
PY
cd "$OUT"
ASAN_OPTIONS=detect_leaks=0 ./snapshot-state-fuzz -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 ${FUZZ_ARGS:-} snapshot-state-corpus
