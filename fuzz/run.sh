#!/bin/sh
# Builds the libFuzzer targets with libFuzzer + AddressSanitizer (LeakSanitizer included) and runs them.
# Usage: fuzz/run.sh [SECONDS] [TARGET...] [-- extra libFuzzer flags]   (default 60 s each, all targets)
# Targets: framer (input framer + grammar), output (output framer), splice (id splicing), router
# (ProxyRouter fed interleaved client and QEMU chunks). Inputs that break an invariant land in
# fuzz/artifacts/<target>/; each corpus grows in fuzz/corpus/<target>/ (seeded from fuzz/seeds/<target>/).
# FUZZ_SANITIZE=fuzzer builds without AddressSanitizer: about 2.8 times the executions per second on the
# router target, with Swift's own bounds and overflow checks still trapping (used for long campaigns).
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-60}"
[ $# -gt 0 ] && shift
targets=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do targets="$targets $1"; shift; done
[ $# -gt 0 ] && shift
[ -n "$targets" ] || targets="framer output splice router"
sanitize="${FUZZ_SANITIZE:-fuzzer,address}"
case "$sanitize" in
fuzzer,address) out=.build/fuzz ;;
fuzzer) out=.build/fuzz-no-asan ;;
*) echo "FUZZ_SANITIZE must be fuzzer,address (the default) or fuzzer" >&2; exit 2 ;;
esac
mkdir -p "$out"
flags="-sanitize=$sanitize -parse-as-library -O -g -I Sources/CJansson"

build() {
    name="$1"; shift
    swiftc $flags "$@" -ljansson -o "$out/$name-fuzz" 2>&1 | grep -v "Cannot export local symbol" || true
    [ -x "$out/$name-fuzz" ] || { echo "fuzz build of $name failed" >&2; exit 1; }
}

for target in $targets; do
    case "$target" in
    framer) build framer -module-name FramerFuzz Sources/QMPWire/*.swift fuzz/FramerFuzz.swift ;;
    output) build output -module-name OutputFuzz Sources/QMPWire/*.swift fuzz/OutputFramerFuzz.swift ;;
    splice) build splice -module-name SpliceFuzz Sources/QMPWire/*.swift fuzz/SpliceFuzz.swift ;;
    router)
        # QMPProxy imports QMPWire: build QMPWire as a module of its own first.
        mkdir -p "$out/modules"
        # QMPWire without coverage instrumentation here: framer, output and splice fuzz it; this target's
        # coverage feedback goes to the router (about twice the executions per second).
        wireflags="-parse-as-library -O -g -I Sources/CJansson"
        [ "$sanitize" = fuzzer,address ] && wireflags="-sanitize=address $wireflags"
        swiftc $wireflags -emit-module -emit-library -static \
            -module-name QMPWire -emit-module-path "$out/modules/QMPWire.swiftmodule" \
            -o "$out/modules/libQMPWire.a" Sources/QMPWire/*.swift 2>&1 | grep -v "Cannot export local symbol" || true
        build router -module-name RouterFuzz -I "$out/modules" Sources/QMPProxy/*.swift fuzz/RouterFuzz.swift \
            "$out/modules/libQMPWire.a"
        ;;
    *) echo "unknown fuzz target $target (framer, output, splice, router)" >&2; exit 2 ;;
    esac
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target" "fuzz/seeds/$target"
    "$out/$target-fuzz" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$target/" "$@" "fuzz/corpus/$target" "fuzz/seeds/$target"
done
