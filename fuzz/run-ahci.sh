#!/usr/bin/env bash
# Builds the AHCI libFuzzer target (registers, command lists, command tables, FISes and region tables in hostile
# guest memory, ATA and ATAPI commands) and runs it for SECONDS (default 60).
# Usage: fuzz/run-ahci.sh [SECONDS]. Needs zlib1g-dev and libzstd-dev (the block backends' module). Seed: a
# READ DMA EXT of one sector written below.
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/fuzz/build"
MODULES="$OUT/ahci-modules"
mkdir -p "$OUT/ahci-corpus" "$MODULES"
cd "$ROOT"
# The modules AHCI imports, each built on its own as SwiftPM builds them.
printf 'module CKVM {\n    header "%s/Sources/CKVM/include/CKVM.h"\n    export *\n}\n' "$ROOT" > "$MODULES/module.modulemap"
clang -O2 -fsanitize=address -I Sources/CKVM/include -c Sources/CKVM/ckvm.c -o "$OUT/ahci-ckvm.o"
build_module() {
    local name="$1"; shift
    swiftc -O -wmo -sanitize=fuzzer,address -parse-as-library -module-name "$name" -I "$MODULES" \
        -I Sources/CZlib -I Sources/CZstd -I Sources/CURing \
        -emit-module -emit-module-path "$MODULES/$name.swiftmodule" -c "$@" -o "$OUT/ahci-$name.o"
}
build_module GuestMemory Sources/GuestMemory/*.swift
build_module Devices Sources/Devices/*.swift
build_module Qcow2 Sources/Qcow2/*.swift
build_module PCI Sources/PCI/*.swift
build_module AHCI Sources/AHCI/*.swift
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name AHCIFuzz -I "$MODULES" -I Sources/CZlib -I Sources/CZstd -I Sources/CURing \
    fuzz/ahci/main.swift fuzz/common/Program.swift "$OUT"/ahci-{GuestMemory,Devices,Qcow2,PCI,AHCI}.o "$OUT/ahci-ckvm.o" -lz -lzstd -luring \
    -o "$OUT/ahci-fuzz"
# Seed: a disk; header of slot 0 at 0x400 (CFL 5, one region, table 0x1000); a READ DMA EXT of LBA 1, one sector,
# into 0x2000; the port started with the list at 0x400 and the FISes at 0x800; slot 0 issued.
python3 - "$OUT/ahci-corpus" <<'PY'
import struct, sys
def store(address, value):
    return bytes([1]) + struct.pack('<HQ', address, value)
program = bytes([0])
program += store(0x400, 5 | 1 << 16) + store(0x408, 0x1000)
program += store(0x1000, 0x27 | 0x80 << 8 | 0x25 << 16 | 1 << 32 | 0x40 << 56) + store(0x1008, 0) + store(0x1010, 1)
program += store(0x1080, 0x2000) + store(0x1088, 511 << 32)
program += bytes([2, 0x00, 0x01, 0x08]) + struct.pack('<II', 0, 1)
open(sys.argv[1] + '/seed-read', 'wb').write(program)
PY
cd "$OUT"
ASAN_OPTIONS=detect_leaks=0 ./ahci-fuzz -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 ${FUZZ_ARGS:-} ahci-corpus
