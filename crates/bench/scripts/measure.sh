#!/usr/bin/env bash
# The standard measurement set, RUNS times each (default 3), with medians.
#
#   fill      --data TEMPLATE --records 1000000        (once: the store every ingest starts from)
#   calibrate
#   ingest    --spawn --spawn-data COPY --clients 64 --seconds 60 --size 1024
#   ingest    --spawn --spawn-data COPY --clients 64 --seconds 60 --size 1024 --fresh-sessions
#   deliver   --spawn --spawn-data COPY --rate R --seconds 30   (R = half this run's ingest rate)
#   sync      --spawn --records 200000 --size 1024
#
# COPY is a fresh copy of TEMPLATE for each run (written to disk with `sync` before the run
# starts), so every ingest meets a store that already holds PRELOAD records (short runs on an
# empty store overstate throughput); PRELOAD=0 runs on empty stores instead.
#
# Build first: cargo build --release -p pigeonhole -p pigeonhole-bench. Both binaries are
# copied to the output directory before the first run, so a rebuild of the work tree during a
# long measurement cannot swap the relay under it. Every raw JSON report is kept in OUT
# (default: a new temp dir), one file per command, one line per run; the summary needs python3.
#
# Environment: RUNS (3), SECONDS_INGEST (60), SECONDS_DELIVER (30), CLIENTS (64), SIZE (1024),
# RECORDS (200000; 50000 before 2026-12-08, whose third of a second of reading made sync the
# noisiest figure), PRELOAD (1000000), BIN (default target/release), OUT.
set -euo pipefail

RUNS=${RUNS:-3}
SECONDS_INGEST=${SECONDS_INGEST:-60}
SECONDS_DELIVER=${SECONDS_DELIVER:-30}
PRELOAD=${PRELOAD:-1000000}
CLIENTS=${CLIENTS:-64}
SIZE=${SIZE:-1024}
RECORDS=${RECORDS:-200000}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-$(mktemp -d -t pigeonhole-measure.XXXXXX)}
mkdir -p "$OUT/bin"
cp "$BIN/pigeonhole" "$BIN/pigeonhole-bench" "$OUT/bin/"
BENCH=$OUT/bin/pigeonhole-bench

run() {
    local name=$1
    shift
    echo "$ pigeonhole-bench $*" >&2
    "$BENCH" "$@" --json >>"$OUT/$name.jsonl"
}

TEMPLATE=$OUT/template
COPY=$OUT/data
store() {
    rm -rf "$COPY"
    if [[ $PRELOAD -gt 0 ]]; then
        cp -r "$TEMPLATE" "$COPY"
        # Write the copy out before the run: left dirty, its gigabytes are written back during
        # the run, and every fdatasync of the relay waits behind them (delivery p99 ~300 ms
        # instead of ~40-120 ms at 7,000 writes/s on a 1 M-record copy).
        sync
        printf '%s\n' --spawn-data "$COPY"
    fi
}
if [[ $PRELOAD -gt 0 ]]; then
    run fill fill --data "$TEMPLATE" --records "$PRELOAD" --size "$SIZE" --restarts 1
fi

last() { sed -n "\$s/.*\"$2\":\([0-9.]*\).*/\1/p" "$OUT/$1.jsonl"; }

for i in $(seq "$RUNS"); do
    echo "--- run $i of $RUNS" >&2
    run calibrate calibrate
    mapfile -t data < <(store)
    run ingest ingest --spawn "${data[@]}" --clients "$CLIENTS" --seconds "$SECONDS_INGEST" --size "$SIZE"
    mapfile -t data < <(store)
    run fresh ingest --spawn "${data[@]}" --clients "$CLIENTS" --seconds "$SECONDS_INGEST" --size "$SIZE" --fresh-sessions
    rate=$(last ingest writes_per_sec | awk '{printf "%d", $1 / 2}')
    mapfile -t data < <(store)
    run deliver deliver --spawn "${data[@]}" --rate "$rate" --seconds "$SECONDS_DELIVER" --size "$SIZE"
    run sync sync --spawn --records "$RECORDS" --size "$SIZE"
done
rm -rf "$COPY"

python3 - "$OUT" <<'EOF'
import json, statistics, sys
out = sys.argv[1]
fields = {
    "calibrate": ["verify_per_sec"],
    "ingest": ["writes_per_sec", "verify_before", "verify_after", "writes_per_verify", "writes_per_relay_cpu_sec", "p50_ms", "p99_ms", "p999_ms",
               "cpu.relay_cores", "cpu.bench_cores", "cpu.other_cores", "relay_after.rss_kb", "relay_after.disk_bytes",
               "disk_bytes_per_write"],
    "fresh": ["writes_per_sec", "verify_before", "verify_after", "writes_per_verify", "writes_per_relay_cpu_sec", "p50_ms", "p99_ms", "p999_ms",
              "cpu.relay_cores", "cpu.bench_cores", "cpu.other_cores", "relay_after.rss_kb", "relay_after.disk_bytes",
              "disk_bytes_per_write", "setup.signed_inline"],
    "fill": ["records_in_store", "disk_per_stored_byte", "restart_serving_ms_median"],
    "deliver": ["rate", "delivered_per_sec", "delivery_latency.p50_ms", "delivery_latency.p99_ms", "delivery_latency.p999_ms", "ack_latency.p99_ms", "missing",
                "cpu.relay_cores", "relay_after.rss_kb"],
    "sync": ["records_per_sec", "mb_per_sec", "verify_before", "verify_after", "records_per_verify", "fill.writes_per_sec", "cpu.relay_cores",
             "relay_after.rss_kb", "relay_after.disk_bytes", "disk_bytes_per_record"],
}
def get(d, path):
    for part in path.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
for name, keys in fields.items():
    try:
        runs = [json.loads(line) for line in open(f"{out}/{name}.jsonl")]
    except FileNotFoundError:
        continue
    print(f"{name} ({len(runs)} runs)")
    for key in keys:
        values = [get(r, key) for r in runs]
        present = [v for v in values if v is not None]
        median = statistics.median(present) if present else None
        print(f"  {key:<28} median {median!s:<14} raw {values}")
    errors = [r.get("errors") for r in runs if r.get("errors")]
    if errors:
        print(f"  errors {errors}")
print(f"raw reports: {out}")
EOF
