#!/usr/bin/env bash
# Soak: does the relay's memory stay flat under a steady load it can carry?
#
# 1. Calibration: a closed-loop `ingest --spawn` (CLIENTS clients on WebSocket sessions,
#    CAL_SECONDS) on a fresh relay finds this machine's maximum acknowledged write rate.
# 2. Soak: on another fresh relay, an open-loop `ingest --spawn --rate RATE` (default LOAD ×
#    the maximum, i.e. half load) for SOAK_SECONDS after WARMUP, with the relay's RSS and
#    data-directory size sampled every SAMPLE_EVERY seconds (`--sample-every`).
# 3. Verdict from the soak report's `rss_growth`: FLAT when the median RSS of the window's last
#    quarter exceeds the median of its second quarter (caches filled by then) by at most
#    TOLERANCE_PCT % of it or TOLERANCE_MIB MiB, whichever is larger; GROWING otherwise. The
#    soak also has to hold its load: acknowledged writes per second of at least MIN_SHARE ×
#    RATE (else LOAD NOT HELD: the figures say little about a relay that could not keep up).
#
# Exits 0 when flat and the load was held, 1 otherwise (the reason is printed), 2 on bad
# setup. Writes to WORK: calibration.json, soak.json (the full `ingest --json` report, with
# `rss_samples` [{t_s, rss_bytes, disk_bytes, heap_allocated_bytes, acked}] and `rss_growth`), *.err (stderr of each
# step), summary.json (the verdict and the figures it rests on). Both binaries are copied to
# WORK/bin first, so a rebuild during a long soak cannot swap the relay under it. Needs only
# bash, awk, sed and coreutils. The soak writes ~RATE × SOAK_SECONDS records of ~1.4 KiB each
# into a temporary data directory (several GB for the default 10 minutes), removed at the end.
#
# Usage (build first):
#   cargo build --release -p pigeonhole -p pigeonhole-bench
#   crates/bench/scripts/soak.sh                       # calibrate, then 10 minutes at half load
#   SOAK_SECONDS=60 crates/bench/scripts/soak.sh       # a short check of the script itself
#   RATE=6000 crates/bench/scripts/soak.sh             # skip the calibration
#
# Environment:
#   SOAK_SECONDS   measured length of the soak (default 600)
#   RATE           target acknowledged writes per second of the soak (default: calibrated)
#   LOAD           share of the calibrated maximum used as RATE (default 0.5)
#   CAL_SECONDS    length of the calibration run (default 20)
#   CLIENTS        clients of both runs (default 64)
#   SIZE           letter bytes per record (default 1024)
#   WARMUP         seconds of soak load before the measured window (default 10)
#   SAMPLE_EVERY   seconds between samples (default 10; SOAK_SECONDS/24 for soaks under 240 s)
#   TOLERANCE_PCT  allowed growth of the last quarter's median RSS over the second's, % (10)
#   TOLERANCE_MIB  ... or this many MiB, whichever is larger (16)
#   MIN_SHARE      least share of RATE the soak must achieve (default 0.9)
#   BIN            directory of both binaries (default target/release)
#   WORK           work directory (default a new temp dir; kept)
set -euo pipefail
exec </dev/null

SOAK_SECONDS=${SOAK_SECONDS:-600}
LOAD=${LOAD:-0.5}
CAL_SECONDS=${CAL_SECONDS:-20}
CLIENTS=${CLIENTS:-64}
SIZE=${SIZE:-1024}
WARMUP=${WARMUP:-10}
TOLERANCE_PCT=${TOLERANCE_PCT:-10}
TOLERANCE_MIB=${TOLERANCE_MIB:-16}
MIN_SHARE=${MIN_SHARE:-0.9}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
WORK=${WORK:-$(mktemp -d -t pigeonhole-soak.XXXXXX)}

usage_error() { echo "soak.sh: $*" >&2; exit 2; }
number() { awk -v v="$2" 'BEGIN { exit !(v ~ /^[0-9]+(\.[0-9]+)?$/ && v > 0) }' || usage_error "$1 must be a positive number, not '$2'"; }
number SOAK_SECONDS "$SOAK_SECONDS"
number LOAD "$LOAD"
number CAL_SECONDS "$CAL_SECONDS"
number SIZE "$SIZE"
number TOLERANCE_PCT "$TOLERANCE_PCT"
number TOLERANCE_MIB "$TOLERANCE_MIB"
number MIN_SHARE "$MIN_SHARE"
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || usage_error "CLIENTS must be a positive integer, not '$CLIENTS'"
[[ $WARMUP =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage_error "WARMUP must be a number of seconds, not '$WARMUP'"
if [[ -z ${SAMPLE_EVERY:-} ]]; then
    SAMPLE_EVERY=$(awk -v s="$SOAK_SECONDS" 'BEGIN { v = s >= 240 ? 10 : s / 24; if (v < 0.5) v = 0.5; printf "%g", v }')
fi
number SAMPLE_EVERY "$SAMPLE_EVERY"
if [[ -n ${RATE:-} ]]; then number RATE "$RATE"; fi
for binary in pigeonhole pigeonhole-bench; do
    [[ -x $BIN/$binary ]] || usage_error "missing $BIN/$binary: cargo build --release -p pigeonhole -p pigeonhole-bench (or set BIN)"
done
mkdir -p "$WORK/bin"
cp "$BIN/pigeonhole" "$BIN/pigeonhole-bench" "$WORK/bin/"
BENCH=$WORK/bin/pigeonhole-bench

# A value of a one-line JSON report: the last `"key":number` in it, or null.
field() {
    local value
    value=$(sed -n "s/.*\"$1\":\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" "$2" | head -n 1)
    echo "${value:-null}"
}
mib() { awk -v b="$1" 'BEGIN { if (b == "null") print "-"; else printf "%.1f", b / 1048576 }'; }

echo "work dir: $WORK"
if [[ -z ${RATE:-} ]]; then
    echo "calibration: ingest --spawn --clients $CLIENTS --seconds $CAL_SECONDS --size $SIZE (closed loop)"
    if ! "$BENCH" ingest --spawn --clients "$CLIENTS" --seconds "$CAL_SECONDS" --size "$SIZE" --json \
        >"$WORK/calibration.json" 2>"$WORK/calibration.err"; then
        echo "the calibration run failed:" >&2
        tail -n 20 "$WORK/calibration.err" >&2
        exit 1
    fi
    max=$(field writes_per_sec "$WORK/calibration.json")
    if [[ $max == null ]] || ! awk -v m="$max" 'BEGIN { exit !(m > 0) }'; then
        echo "the calibration run acknowledged nothing (writes_per_sec $max); see $WORK/calibration.err" >&2
        exit 1
    fi
    RATE=$(awk -v m="$max" -v l="$LOAD" 'BEGIN { r = int(m * l); print (r < 1 ? 1 : r) }')
    echo "calibration: $max writes/s closed loop (p99 $(field p99_ms "$WORK/calibration.json") ms); soak rate $RATE/s ($LOAD of it)"
else
    max=null
fi

echo "soak: ingest --spawn --clients $CLIENTS --rate $RATE --seconds $SOAK_SECONDS --warmup $WARMUP --sample-every $SAMPLE_EVERY"
soak_status=0
"$BENCH" ingest --spawn --clients "$CLIENTS" --size "$SIZE" --rate "$RATE" --seconds "$SOAK_SECONDS" \
    --warmup "$WARMUP" --sample-every "$SAMPLE_EVERY" --json >"$WORK/soak.json" 2>"$WORK/soak.err" || soak_status=$?
if ((soak_status != 0)) || [[ ! -s $WORK/soak.json ]]; then
    echo "the soak run failed (status $soak_status):" >&2
    tail -n 20 "$WORK/soak.err" >&2
    exit 1
fi
R=$WORK/soak.json
q1=$(field q1_median_bytes "$R") q2=$(field q2_median_bytes "$R") q4=$(field q4_median_bytes "$R")
max_rss=$(field max_bytes "$R") samples=$(field samples "$R") disk=$(field disk_growth_bytes "$R")
heap2=$(field heap_q2_median_bytes "$R") heap4=$(field heap_q4_median_bytes "$R")
achieved=$(field achieved_per_sec "$R") share=$(field achieved_share "$R")
late=$(field late "$R") unsent=$(field unsent "$R") unanswered=$(field unanswered "$R")
errors=$(sed -n 's/.*"errors":\({[^}]*}\).*/\1/p' "$R" | head -n 1)

echo "soak: $achieved of $RATE writes/s acknowledged (share $share; $late late, $unsent never sent," \
    "$unanswered unanswered; errors ${errors:-?}); p50/p99/p999 $(field p50_ms "$R")/$(field p99_ms "$R")/$(field p999_ms "$R") ms;" \
    "relay $(field relay_cores "$R") cores, generator $(field bench_cores "$R")"
echo "rss ($samples samples in the window): q1 median $(mib "$q1") MiB, q2 median $(mib "$q2") MiB," \
    "q4 median $(mib "$q4") MiB, max $(mib "$max_rss") MiB; disk grew $(mib "$disk") MiB"
echo "live heap (the relay's own figure): q2 median $(mib "$heap2") MiB, q4 median $(mib "$heap4") MiB"
grep -v '^$' "$WORK/soak.err" | sed 's/^/  (soak stderr) /' || true

verdict=FLAT
reason=
if [[ $q2 == null || $q4 == null ]]; then
    verdict=NO_VERDICT
    reason="no RSS samples in the second or last quarter (SAMPLE_EVERY $SAMPLE_EVERY too long, or the relay went away)"
    tolerance=null growth=null
else
    tolerance=$(awk -v q2="$q2" -v pct="$TOLERANCE_PCT" -v mib="$TOLERANCE_MIB" \
        'BEGIN { a = q2 * pct / 100; b = mib * 1048576; printf "%d", (a > b ? a : b) }')
    growth=$((q4 - q2))
    if ((growth > tolerance)); then
        verdict=GROWING
        reason="the last quarter's median RSS is $(mib "$growth") MiB above the second quarter's (allowed $(mib "$tolerance") MiB)"
    fi
fi
if [[ $verdict == FLAT ]] && ! awk -v s="$share" -v m="$MIN_SHARE" 'BEGIN { exit !(s != "null" && s >= m) }'; then
    verdict=LOAD_NOT_HELD
    reason="$achieved of $RATE writes/s acknowledged (share $share < $MIN_SHARE): the relay did not keep up"
fi
printf '{"verdict":"%s","reason":"%s","rate":%s,"calibrated_max_per_sec":%s,"load":%s,"soak_seconds":%s,"warmup":%s,"sample_every":%s,"achieved_per_sec":%s,"achieved_share":%s,"samples":%s,"q1_median_bytes":%s,"q2_median_bytes":%s,"q4_median_bytes":%s,"heap_q2_median_bytes":%s,"heap_q4_median_bytes":%s,"max_rss_bytes":%s,"growth_q2_q4_bytes":%s,"tolerance_bytes":%s,"disk_growth_bytes":%s,"report":"%s"}\n' \
    "$verdict" "$reason" "$RATE" "$max" "$LOAD" "$SOAK_SECONDS" "$WARMUP" "$SAMPLE_EVERY" "$achieved" "$share" \
    "$samples" "$q1" "$q2" "$q4" "$heap2" "$heap4" "$max_rss" "$growth" "$tolerance" "$disk" "$R" >"$WORK/summary.json"

if [[ $verdict == FLAT ]]; then
    echo "verdict: FLAT: the last quarter's median RSS is $(mib "$growth") MiB from the second quarter's" \
        "(allowed +$(mib "$tolerance") MiB) over $SOAK_SECONDS s at $RATE writes/s (report: $R)"
    exit 0
fi
echo "verdict: $verdict: $reason (report: $R)"
exit 1
