#!/usr/bin/env bash
# Builds the kernel-image libFuzzer target (ELF64 and bzImage header parsing) and runs it for SECONDS (default 60).
# Usage: fuzz/run-kernel-image.sh [SECONDS]. Seeds: the test guests (make -C Guests) and /boot/vmlinuz-* if present.
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/fuzz/build"
mkdir -p "$OUT/kernel-image-corpus"
cd "$ROOT"
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name KernelImageFuzz \
    Sources/BootLoader/ELFImage.swift Sources/BootLoader/BzImage.swift fuzz/kernel-image/main.swift \
    -o "$OUT/kernel-image-fuzz"
for seed in Guests/build/*.elf; do
    [ -f "$seed" ] && cp "$seed" "$OUT/kernel-image-corpus/"
done
# A bzImage's first 64 KiB carry its setup header; larger inputs only slow the fuzzer down.
for kernel in /boot/vmlinuz-*; do
    [ -f "$kernel" ] && head -c 65536 "$kernel" > "$OUT/kernel-image-corpus/$(basename "$kernel").head"
done
cd "$OUT"
ASAN_OPTIONS=detect_leaks=0 ./kernel-image-fuzz -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 ${FUZZ_ARGS:-} kernel-image-corpus
