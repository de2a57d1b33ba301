#!/usr/bin/env bash
# Builds the migration-stream libFuzzer target (frame headers, the hello, page batches written into guest memory
# between guard pages) and runs it for SECONDS (default 60).
# Usage: fuzz/run-migration-stream.sh [SECONDS]. Seeds: a hello, a batch of three pages (one zero), an end of round.
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/fuzz/build"
mkdir -p "$OUT/migration-stream-corpus" "$OUT/migration-stream-modules"
cd "$ROOT"
swiftc -O -wmo -sanitize=fuzzer,address -parse-as-library -module-name Snapshot \
    -emit-module -emit-module-path "$OUT/migration-stream-modules/Snapshot.swiftmodule" \
    -c Sources/Snapshot/*.swift -o "$OUT/migration-stream-snapshot.o"
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name MigrationFuzz -I "$OUT/migration-stream-modules" \
    Sources/Migration/*.swift fuzz/migration-stream/main.swift "$OUT/migration-stream-snapshot.o" \
    -o "$OUT/migration-stream-fuzz"
python3 - "$OUT/migration-stream-corpus" <<'PY'
import struct, sys
def frame(kind, payload):
    return struct.pack('<B3xI', kind, len(payload)) + payload
config = b'{"cpus":1}'
hello = struct.pack('<II', 1, len(config)) + config + struct.pack('<I', 1) + struct.pack('<QQ', 0, 16 * 4096)
pages = [0, 3, 15]
batch = struct.pack('<II', 0, len(pages)) + b''.join(struct.pack('<Q', p) for p in pages) + bytes([0b010])
batch += bytes([0x11]) * 4096 + bytes([0x22]) * 4096
stream = frame(1, hello) + frame(3, batch) + frame(4, struct.pack('<I', 1))
open(sys.argv[1] + '/seed-hello-pages-round', 'wb').write(stream)
PY
cd "$OUT"
ASAN_OPTIONS=detect_leaks=0 ./migration-stream-fuzz -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 ${FUZZ_ARGS:-} migration-stream-corpus
