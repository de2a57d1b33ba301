#!/usr/bin/env bash
# Builds the fw_cfg libFuzzer target (selector and data ports, DMA descriptors in hostile guest memory) and runs it
# for SECONDS (default 60).
# Usage: fuzz/run-fw-cfg.sh [SECONDS]. Seed: a SeaBIOS-like sequence written below.
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/fuzz/build"
mkdir -p "$OUT/fw-cfg-corpus" "$OUT/fw-cfg-modules"
cd "$ROOT"
# GuestMemory (over the CKVM C shim) and Devices are modules of their own, as SwiftPM builds them.
printf 'module CKVM {\n    header "%s/Sources/CKVM/include/CKVM.h"\n    export *\n}\n' "$ROOT" \
    > "$OUT/fw-cfg-modules/module.modulemap"
clang -O2 -fsanitize=address -I Sources/CKVM/include -c Sources/CKVM/ckvm.c -o "$OUT/fw-cfg-ckvm.o"
swiftc -O -wmo -sanitize=fuzzer,address -parse-as-library -module-name GuestMemory -I "$OUT/fw-cfg-modules" \
    -emit-module -emit-module-path "$OUT/fw-cfg-modules/GuestMemory.swiftmodule" \
    -c Sources/GuestMemory/*.swift -o "$OUT/fw-cfg-guestmemory.o"
swiftc -O -wmo -sanitize=fuzzer,address -parse-as-library -module-name Devices \
    -emit-module -emit-module-path "$OUT/fw-cfg-modules/Devices.swiftmodule" \
    -c Sources/Devices/*.swift -o "$OUT/fw-cfg-devices.o"
# FirmwareConfigItems takes its little-endian encoder from ACPI.
swiftc -O -wmo -sanitize=fuzzer,address -parse-as-library -module-name ACPI \
    -emit-module -emit-module-path "$OUT/fw-cfg-modules/ACPI.swiftmodule" \
    -c Sources/ACPI/*.swift -o "$OUT/fw-cfg-acpi.o"
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name FirmwareConfigFuzz -I "$OUT/fw-cfg-modules" \
    Sources/Firmware/FirmwareConfigItems.swift Sources/Firmware/FirmwareConfigDevice.swift fuzz/fw-cfg/main.swift \
    fuzz/common/Program.swift "$OUT/fw-cfg-guestmemory.o" "$OUT/fw-cfg-devices.o" "$OUT/fw-cfg-acpi.o" "$OUT/fw-cfg-ckvm.o" \
    -o "$OUT/fw-cfg-fuzz"
# Seed: select the signature and read it through the data port, then a select+read DMA of the directory into RAM.
python3 - "$OUT/fw-cfg-corpus" <<'PY'
import struct, sys
program = bytes([0]) + struct.pack('<H', 0) + bytes([1, 4])
program += bytes([2, 0xC0]) + struct.pack('<Q', 0x1000) + struct.pack('<I', 0x19 << 16 | 0xA) + struct.pack('<H', 68) + struct.pack('<I', 0x2000)
program += bytes([2, 0xC0]) + struct.pack('<Q', 0x1000) + struct.pack('<I', 0x4) + struct.pack('<H', 10) + struct.pack('<I', 0)
open(sys.argv[1] + '/seed-seabios', 'wb').write(program)
PY
cd "$OUT"
ASAN_OPTIONS=detect_leaks=0 ./fw-cfg-fuzz -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 ${FUZZ_ARGS:-} fw-cfg-corpus
