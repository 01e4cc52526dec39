#!/bin/sh
# Builds the QMPWire fuzz target with libFuzzer + AddressSanitizer (LeakSanitizer included) and
# runs it. Usage: fuzz/run.sh [SECONDS] [extra libFuzzer flags...]   (default 60 s)
# Crashing inputs land in fuzz/artifacts/; the corpus grows in fuzz/corpus/ (seeded from fuzz/seeds/).
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-60}"
[ $# -gt 0 ] && shift
out=.build/fuzz
mkdir -p "$out" fuzz/corpus fuzz/artifacts
swiftc -sanitize=fuzzer,address -parse-as-library -O -g \
    -module-name QMPWireFuzz \
    -I Sources/CJansson -ljansson \
    Sources/QMPWire/*.swift fuzz/FramerFuzz.swift \
    -o "$out/qmpwire-fuzz" 2>&1 | grep -v "Cannot export local symbol" || true
[ -x "$out/qmpwire-fuzz" ] || { echo "fuzz build failed" >&2; exit 1; }
exec "$out/qmpwire-fuzz" -max_total_time="$seconds" -max_len=4096 \
    -artifact_prefix=fuzz/artifacts/ "$@" fuzz/corpus fuzz/seeds
