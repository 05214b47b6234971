#!/usr/bin/env bash
# A/B of two relay builds under closed-loop ingest, alternated, each run on a fresh copy of one
# store: the method behind the before/after figures in docs/PERFORMANCE.md ("What changed in
# the design").
#
# Each round runs build A, then build B (`pigeonhole-bench ingest --spawn --pigeonhole BIN
# --spawn-data COPY`, which starts the relay with its rate limits raised and reads its
# threads' CPU from /proc), and prints one line per run: writes/s, × the verify rate measured
# around the run, ack p50 / p99 / p999, relay cores, relay CPU per write and the CPU of each
# relay thread group. Alternating the builds spreads the machine's noise over both.
#
# Usage (build each variant first and keep its `pigeonhole` binary somewhere):
#   target/release/pigeonhole-bench fill --data /tmp/store1m --records 1000000
#   crates/bench/scripts/ab.sh /tmp/store1m /tmp/pigeonhole-before /tmp/pigeonhole-after
#
# A store keeps the storage options it was created with: to compare store settings, fill one
# store with each build and pass STORE_B.
#
# Environment:
#   ROUNDS    rounds, each one run of A and one of B (default 3)
#   SECONDS_  seconds of load per run (default 40)
#   CLIENTS   ingest clients, one WebSocket session each (default 64)
#   STORE_B   the store B runs on (default: the same as A)
#   BENCH     the pigeonhole-bench binary (default target/release/pigeonhole-bench)
#   WORK      work directory (default a new temp dir; kept): the copy and each run's JSON
# Needs bash, coreutils and python3 (for the summary lines).
set -euo pipefail

if [ $# -ne 3 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
fi
STORE_A=$1
BIN_A=$2
BIN_B=$3
STORE_B=${STORE_B:-$STORE_A}
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_:-40}
CLIENTS=${CLIENTS:-64}
BENCH=${BENCH:-target/release/pigeonhole-bench}
WORK=${WORK:-$(mktemp -d -t pigeonhole-ab.XXXXXX)}
for f in "$BIN_A" "$BIN_B" "$BENCH"; do
    [ -x "$f" ] || { echo "ab.sh: $f is not an executable (build it first)" >&2; exit 2; }
done
for d in "$STORE_A" "$STORE_B"; do
    [ -d "$d" ] || { echo "ab.sh: $d is not a store directory (make one with pigeonhole-bench fill)" >&2; exit 2; }
done
mkdir -p "$WORK"
echo "ab.sh: $ROUNDS rounds of $SECS s, $CLIENTS clients; A=$BIN_A on $STORE_A, B=$BIN_B on $STORE_B; work in $WORK" >&2

run() { # label round binary store
    local out="$WORK/$1-$2.json"
    rm -rf "$WORK/data"
    cp -r "$4" "$WORK/data"
    sync
    "$BENCH" ingest --spawn --pigeonhole "$3" --spawn-data "$WORK/data" --clients "$CLIENTS" \
        --seconds "$SECS" --json >"$out" 2>"$WORK/$1-$2.err"
    python3 - "$1" "$2" "$out" <<'EOF'
import json, sys
label, rnd, path = sys.argv[1:]
d = json.load(open(path))
cpu = d["cpu"]
threads = " ".join(f"{k}:{v:.2f}" for k, v in sorted(cpu["relay_threads"].items()))
print(f"{label} round {rnd}: {d['writes_per_sec']:,.0f} writes/s ({d['writes_per_verify']:.2f} x verify), "
      f"p50/p99/p999 {d['p50_ms']:.1f}/{d['p99_ms']:.1f}/{d['p999_ms']:.1f} ms, relay {cpu['relay_cores']:.2f} cores, "
      f"{1e6 / d['writes_per_relay_cpu_sec']:.1f} us/write; thread cores {threads}")
EOF
}

for round in $(seq "$ROUNDS"); do
    run A "$round" "$BIN_A" "$STORE_A"
    run B "$round" "$BIN_B" "$STORE_B"
done
rm -rf "$WORK/data"
