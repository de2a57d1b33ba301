#!/usr/bin/env bash
# Builds the qcow2 libFuzzer target and runs it for SECONDS (default 60).
# Usage: fuzz/run-qcow2.sh [SECONDS]
# Needs zlib1g-dev and libzstd-dev; qemu-img (optional) adds seed images.
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/fuzz/build"
mkdir -p "$OUT/corpus"
cd "$ROOT"
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name Qcow2Fuzz \
    -I Sources/CZlib -I Sources/CZstd -I Sources/CURing \
    Sources/Qcow2/*.swift fuzz/qcow2/main.swift \
    -o "$OUT/qcow2-fuzz"
# Seeds: small valid images of several shapes.
if command -v qemu-img >/dev/null 2>&1; then
    i=0
    for opts in "cluster_size=512" "cluster_size=4096,refcount_bits=1" "compat=0.10,cluster_size=1024" \
                "extended_l2=on,cluster_size=16k" "cluster_size=512,refcount_bits=64" "compression_type=zstd,cluster_size=4096"; do
        f="$OUT/corpus/seed$i.qcow2"
        if [ ! -f "$f" ]; then
            qemu-img create -q -f qcow2 -o "$opts" "$f" 256K
            command -v qemu-io >/dev/null 2>&1 && qemu-io -f qcow2 -c "write -P 0x41 0 3k" -c "write -z 8k 4k" "$f" >/dev/null || true
            qemu-img snapshot -c s "$f" 2>/dev/null || true
        fi
        i=$((i + 1))
    done
fi
# Keep going after the first bug report? No: stop, keep the crash file in fuzz/build.
cd "$OUT"
ASAN_OPTIONS=detect_leaks=0 ./qcow2-fuzz -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 ${FUZZ_ARGS:-} corpus
