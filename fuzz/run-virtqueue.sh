#!/usr/bin/env bash
# Builds the split-virtqueue libFuzzer target (descriptor chains, indirect tables, ring indices in hostile
# guest memory) and runs it for SECONDS (default 60).
# Usage: fuzz/run-virtqueue.sh [SECONDS]. Seeds: a few well-formed rings written below.
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/fuzz/build"
mkdir -p "$OUT/virtqueue-corpus" "$OUT/virtqueue-modules"
cd "$ROOT"
# GuestMemory is its own module (Virtio imports it), over the CKVM C shim; SwiftPM would write this module map.
printf 'module CKVM {\n    header "%s/Sources/CKVM/include/CKVM.h"\n    export *\n}\n' "$ROOT" \
    > "$OUT/virtqueue-modules/module.modulemap"
clang -O2 -fsanitize=address -I Sources/CKVM/include -c Sources/CKVM/ckvm.c -o "$OUT/virtqueue-ckvm.o"
swiftc -O -wmo -sanitize=fuzzer,address -parse-as-library -module-name GuestMemory -I "$OUT/virtqueue-modules" \
    -emit-module -emit-module-path "$OUT/virtqueue-modules/GuestMemory.swiftmodule" \
    -c Sources/GuestMemory/*.swift -o "$OUT/virtqueue-guestmemory.o"
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name VirtqueueFuzz \
    -I "$OUT/virtqueue-modules" \
    Sources/Virtio/*.swift fuzz/virtqueue/main.swift "$OUT/virtqueue-guestmemory.o" "$OUT/virtqueue-ckvm.o" \
    -o "$OUT/virtqueue-fuzz"
# Seed: queue of 8 at table 0x1000, avail 0x2000, used 0x3000 with EVENT_IDX and INDIRECT_DESC; three chains:
# a direct readable+writable pair, an indirect table of two, and a single buffer.
python3 - "$OUT/virtqueue-corpus" <<'PY'
import struct, sys
ram = bytearray(0x4000)
ram[0:8] = bytes([3, 3]) + struct.pack('<HHH', 0x1000 // 16, 0x2000 // 2, 0x3000 // 4)
def desc(base, i, addr, length, flags, nxt):
    ram[base + 16 * i: base + 16 * i + 16] = struct.pack('<QIHH', addr, length, flags, nxt)
desc(0x1000, 0, 0x100, 16, 1, 1)
desc(0x1000, 1, 0x200, 64, 2, 0)
desc(0x1000, 2, 0x800, 32, 4, 0)
desc(0x800, 0, 0x300, 8, 1, 1)
desc(0x800, 1, 0x400, 8, 2, 0)
desc(0x1000, 3, 0x500, 4, 0, 0)
ram[0x2000:0x2004] = struct.pack('<HH', 0, 3)
ram[0x2004:0x200A] = struct.pack('<HHH', 0, 2, 3)
open(sys.argv[1] + '/seed-three-chains', 'wb').write(bytes(ram))
PY
cd "$OUT"
ASAN_OPTIONS=detect_leaks=0 ./virtqueue-fuzz -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 ${FUZZ_ARGS:-} virtqueue-corpus
