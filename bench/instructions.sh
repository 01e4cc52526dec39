#!/bin/bash
# User-space instructions per round trip of the release qmp-sidecar, counted by valgrind (callgrind)
# on a lone client's back-to-back `query-status` through the sidecar to a real QEMU 7.2: the run with
# 3000 round trips minus the run with 1000, divided by 2000, so start-up and negotiation cancel out.
# Deterministic (no timing): a figure to compare builds by, next to `qmp-bench proxy`.
# The same runs simulate 2 KiB first-level caches: the code and data lines fetched per round trip then
# approximate the footprint that runs cold after every sleep, which is what the benchmark's user CPU
# tracks more closely than the instruction count (the C floor's loop fits those caches: 0 lines).
# It also counts the hot code: the distinct code lines that run at least once per round trip, the
# closest deterministic measure of what a wake-up fetches cold.
# The shell floor (`qmp-bench shell-floor`, a byte pump on the sidecar's runtime) is counted the same
# way: what the sidecar fetches beyond it is its protocol work.
# valgrind does not read this toolchain's debug info, so it runs on a copy without it.
# Usage: bench/instructions.sh [TOP]   (TOP: also list the TOP functions by instructions per round trip)
set -euo pipefail
cd "$(dirname "$0")/.."
top=${1:-0}
for tool in valgrind callgrind_annotate qemu-system-x86_64 cc strip python3; do
    command -v "$tool" >/dev/null || { echo "bench/instructions.sh: $tool is missing (apt-get install valgrind qemu-system-x86 gcc binutils python3)" >&2; exit 1; }
done
[ -x .build/release/qmp-sidecar ] && [ -x .build/release/qmp-bench ] ||
    { echo "bench/instructions.sh: build first: swift build -c release" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -Wall -o "$work/lone-client" bench/lone-client.c
for program in qmp-sidecar qmp-bench; do
    cp ".build/release/$program" "$work/$program"
    strip --strip-debug "$work/$program"
done

count() { # PROGRAM N -> callgrind profile and totals of qmp-sidecar or the shell floor over N round trips
    local program=$1 n=$2
    rm -f "$work"/*.sock "$work"/cg.*
    qemu-system-x86_64 -machine none -nodefaults -display none -qmp "unix:$work/q.sock,server=on,wait=off" 2>/dev/null &
    local qemu=$!
    while [ ! -S "$work/q.sock" ]; do sleep 0.05; done
    if [ "$program" = qmp-sidecar ]; then
        set -- "$work/qmp-sidecar" --upstream "unix:$work/q.sock" --listen "unix:$work/s.sock" --log-level error
    else # the shell floor: a byte pump on the sidecar's runtime (qmp-bench shell-floor)
        set -- "$work/qmp-bench" shell-floor "$work/s.sock" "$work/q.sock"
    fi
    valgrind --tool=callgrind --cache-sim=yes --I1=2048,2,64 --D1=2048,2,64 --LL=8192,2,64 \
        --dump-instr=yes --compress-pos=no --compress-strings=no \
        --callgrind-out-file="$work/cg.out" "$@" 2>"$work/valgrind.log" &
    local sidecar=$!
    for _ in $(seq 200); do [ -S "$work/s.sock" ] && break; sleep 0.1; done
    "$work/lone-client" "$work/s.sock" "$n"
    kill "$sidecar"; wait "$sidecar" || true
    kill "$qemu"; wait "$qemu" 2>/dev/null || true
    callgrind_annotate --show=Ir --threshold=100 "$work/cg.out" > "$work/profile-$program-$n.txt"
    grep -E '^(events|summary):' "$work/cg.out" > "$work/summary-$program-$n.txt"
    mv "$work/cg.out" "$work/cg-$program-$n.out"
}
for program in qmp-sidecar shell-floor; do
    count "$program" 1000
    count "$program" 3000
done
python3 - "$work" <<'PY'
import sys
def load(path):
    lines = dict(line.split(":", 1) for line in open(path))
    return dict(zip(lines["events"].split(), map(int, lines["summary"].split())))
for program in ("qmp-sidecar", "shell-floor"):
    small, large = (load(f"{sys.argv[1]}/summary-{program}-{n}.txt") for n in (1000, 3000))
    per = {event: (large[event] - small[event]) / 2000 for event in large}
    print(f"{program}: {per['Ir']:.0f} instructions, {per['I1mr']:.0f} code and {per['D1mr'] + per['D1mw']:.0f} data"
          " cache lines fetched per round trip (2 KiB L1 caches)")
PY
# Hot code: the distinct 64-byte lines (and 4 KiB pages) of code holding an instruction that runs at
# least once per round trip (2000 more times in the 3000-round-trip run than in the 1000 one), in
# any object (the C library and the Swift runtime included). After every sleep this code is fetched
# again: it is what user CPU per round trip follows (see BENCHMARKS.md).
python3 - "$work" <<'PY'
import collections, sys
def counts(path):
    count, obj, skip = collections.Counter(), None, False
    for line in open(path):
        if line.startswith("ob="):
            obj = line[3:].strip()
        elif line.startswith("calls="):
            skip = True  # the next cost line is the call's inclusive cost
        elif line.startswith("0x"):
            if skip:
                skip = False
                continue
            fields = line.split()
            count[(obj, int(fields[0], 16))] += int(fields[2]) if len(fields) > 2 else 0
    return count
for program in ("qmp-sidecar", "shell-floor"):
    small, large = (counts(f"{sys.argv[1]}/cg-{program}-{n}.out") for n in (1000, 3000))
    hot = {(obj, address >> 6) for (obj, address), n in large.items() if n - small.get((obj, address), 0) >= 2000}
    pages = {(obj, line >> 6) for obj, line in hot}
    print(f"{program}: {len(hot)} hot code lines in {len(pages)} pages (code run at least once per round trip)")
PY
python3 - "$work/profile-qmp-sidecar-1000.txt" "$work/profile-qmp-sidecar-3000.txt" "$top" <<'PY'
import re, sys
def load(path):
    functions, total = {}, 0
    for line in open(path):
        m = re.match(r'\s*([\d,]+) \([ \d.]+%\)\s+(.*)$', line)
        if not m:
            continue
        value, name = int(m.group(1).replace(',', '')), m.group(2)
        if 'PROGRAM TOTALS' in name:
            total = value
        else:
            functions[name] = functions.get(name, 0) + value
    return functions, total
small, small_total = load(sys.argv[1])
large, large_total = load(sys.argv[2])
rows = sorted(((large.get(k, 0) - small.get(k, 0)) / 2000, k) for k in set(small) | set(large))
for value, name in reversed(rows[-int(sys.argv[3]):] if int(sys.argv[3]) else []):
    name = re.sub(r' \[.*\]$', '', name).replace('???:', '')
    print(f"{value:8.0f}  {name[:140]}")
PY
