#!/bin/bash
# What a cold cache line costs in user CPU on this machine, measured on the C floor proxy itself:
# the floor (bench/floor-proxy.c built with -DFOOTPRINT_PROBE) runs, after every read, either N
# generated functions laid out one after another (N x 80 bytes of code, each line fetched once per
# read), the first of them N times (the same instructions from two lines), or N loads of distinct
# data lines. A lone C client (bench/lone-client.c) sends back-to-back `query-status` through it to a
# real QEMU; user CPU is read from /proc/PID/stat. The differences against the bare floor, in the
# same run, give the cost per line; qmp-sidecar's lines per round trip come from bench/instructions.sh.
# Usage: bench/footprint.sh [ROUND_TRIPS] [LINES_PER_READ]
set -euo pipefail
cd "$(dirname "$0")/.."
trips=${1:-30000}
lines=${2:-400}
for tool in qemu-system-x86_64 cc python3; do
    command -v "$tool" >/dev/null || { echo "bench/footprint.sh: $tool is missing" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$work/probe-code.c" <<'PY'
import sys
functions = 4096
out = ["#include <stdint.h>", "volatile uint64_t probe_salt;"]
for i in range(functions):
    out.append(f"__attribute__((noinline)) uint64_t probe_f{i}(uint64_t x) {{ x ^= x >> {i % 13 + 1}; "
               f"x *= {2 * i + 3}ULL; x += probe_salt; x ^= x << {i % 7 + 1}; x *= {4 * i + 5}ULL; "
               f"x ^= x >> {i % 11 + 2}; x += {i}; x *= 0x9E3779B97F4A7C15ULL; x ^= x >> 29; return x; }}")
out.append("typedef uint64_t (*probe_fn)(uint64_t);")
out.append("static probe_fn probe_table[] = {" + ",".join(f"probe_f{i}" for i in range(functions)) + "};")
out.append("uint64_t probe_code(long count, int same) { uint64_t x = 1; if (count > %d) count = %d; "
           "for (long i = 0; i < count; i++) x = probe_table[same ? 0 : i](x); return x; }" % (functions, functions))
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
cc -O2 -Wall -DFOOTPRINT_PROBE -o "$work/probe-floor" bench/floor-proxy.c "$work/probe-code.c"
cc -O2 -Wall -o "$work/lone-client" bench/lone-client.c
bytes=$((16#$(nm -S "$work/probe-floor" | awk '$4 == "probe_f1" { print $2 }')))

qemu-system-x86_64 -machine none -nodefaults -display none -qmp "unix:$work/q.sock,server=on,wait=off" 2>/dev/null &
while [ ! -S "$work/q.sock" ]; do sleep 0.05; done
ticks=$(getconf CLK_TCK)

run() { # NAME ENV... -> prints user and system µs per round trip
    local name=$1; shift
    rm -f "$work/s.sock"
    env "$@" "$work/probe-floor" "$work/s.sock" "$work/q.sock" &
    local floor=$!
    while [ ! -S "$work/s.sock" ]; do sleep 0.05; done
    local before after
    before=$(awk '{ print $14, $15 }' "/proc/$floor/stat")
    "$work/lone-client" "$work/s.sock" "$trips"
    after=$(awk '{ print $14, $15 }' "/proc/$floor/stat")
    kill "$floor"; wait "$floor" 2>/dev/null || true
    python3 -c "
b, a, n, hz = '$before'.split(), '$after'.split(), $trips, $ticks
print('%s %.2f %.2f' % ('$name', (int(a[0]) - int(b[0])) * 1e6 / hz / n, (int(a[1]) - int(b[1])) * 1e6 / hz / n))"
}
{
    for round in 1 2 3; do
        run floor
        run code PROBE_CODE="$lines"
        run same PROBE_CODE="$lines" PROBE_SAME=1
        run data PROBE_DATA="$lines"
    done
} > "$work/results.txt"
python3 - "$work/results.txt" "$lines" "$bytes" "$trips" "$ticks" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
lines, size, trips = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
user = {name: statistics.median(float(r[1]) for r in rows if r[0] == name) for name in ("floor", "code", "same", "data")}
per_rt = 2 * lines  # two reads per round trip
code_lines = per_rt * size / 64
print(f"bench/footprint.sh: {trips} round trips per path, 3 rounds, medians; user CPU per round trip (µs)")
for label, name in (("bare floor", "floor"), (f"+ {per_rt} functions: {code_lines:.0f} distinct code lines", "code"),
                    (f"+ {per_rt} calls of one function: same instructions, 2 lines", "same"),
                    (f"+ {per_rt} distinct data lines", "data")):
    print(f"  {label:<62} {user[name]:6.2f}")
code = (user['code'] - user['same']) / code_lines * 1000
data = (user['data'] - user['floor']) / per_rt * 1000
print(f"user CPU per line fetched: code {code:.1f} ns, data {data:.1f} ns"
      f" (resolution {1e6 / int(sys.argv[5]) / trips:.2f} µs per round trip: one clock tick)")
PY
