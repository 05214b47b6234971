#!/usr/bin/env bash
# Crash safety by hand: is every write the relay acknowledged still there after a kill -9?
#
# Each round: start `pigeonhole serve` on one fixed data directory, run
# `pigeonhole-bench ingest --acked-log` against it in the background, kill -9 the relay at a
# random moment while writes are being acknowledged, restart it on the same directory, and run
# `pigeonhole-bench check` over the acked log (which grows across rounds, so every round
# re-checks everything acknowledged before every earlier crash too). Exits non-zero if a round
# finds an acknowledged record missing, or if the relay does not come back.
#
# Build first: cargo build --release -p pigeonhole -p pigeonhole-bench
#
# Environment: ROUNDS (default 3), CLIENTS (16), RUN_SECONDS (ingest length, 6),
# BIN (directory of both binaries, default target/release), WORK (default a new temp dir,
# kept: relay logs, acked log, every JSON report).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-16}
RUN_SECONDS=${RUN_SECONDS:-6}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
RELAY=$BIN/pigeonhole
BENCH=$BIN/pigeonhole-bench
WORK=${WORK:-$(mktemp -d -t pigeonhole-crash.XXXXXX)}
DATA=$WORK/data
LOG=$WORK/acked.txt
mkdir -p "$WORK"

for binary in "$RELAY" "$BENCH"; do
    [[ -x $binary ]] || { echo "missing $binary: cargo build --release -p pigeonhole -p pigeonhole-bench" >&2; exit 2; }
done

# The relay's per-IP and per-account limits would otherwise throttle one local benchmark.
SETTINGS=()
known=$("$RELAY" serve --print-config)
for setting in limits.requests_per_sec_per_ip=1000000 limits.burst_per_ip=1000000 \
    limits.registrations_per_hour_per_ip=1000000 limits.writes_per_sec_per_account=1000000 \
    limits.write_burst_per_account=1000000 accounts.max_records_per_day=1000000000; do
    key=${setting%%=*}
    if grep -q "^${key#*.} = " <<<"$known"; then SETTINGS+=(--set "$setting"); fi
done

RELAY_PID=
URL=
start_relay() {
    : >"$WORK/relay.out"
    "$RELAY" serve --listen 127.0.0.1:0 --data "$DATA" "${SETTINGS[@]}" >"$WORK/relay.out" 2>>"$WORK/relay.log" &
    RELAY_PID=$!
    for _ in $(seq 300); do
        URL=$(sed -n 's/^listening on //p' "$WORK/relay.out" | head -n 1)
        [[ -n $URL ]] && return 0
        if ! kill -0 "$RELAY_PID" 2>/dev/null; then
            echo "the relay did not start on $DATA; its log:" >&2
            tail -n 20 "$WORK/relay.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "the relay printed no address within 30 s" >&2
    return 1
}

stop_relay() {
    if [[ -n $RELAY_PID ]] && kill -0 "$RELAY_PID" 2>/dev/null; then
        kill -TERM "$RELAY_PID"
        wait "$RELAY_PID" 2>/dev/null || true
    fi
    RELAY_PID=
}
trap 'stop_relay' EXIT

lines() { if [[ -f $LOG ]]; then wc -l <"$LOG"; else echo 0; fi; }
field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" "$2"; }

echo "work dir: $WORK (data: $DATA)"
failed=0
for round in $(seq "$ROUNDS"); do
    start_relay
    before=$(lines)
    "$BENCH" ingest --relay "$URL" --clients "$CLIENTS" --seconds "$RUN_SECONDS" --warmup 0 --pool 64 \
        --acked-log "$LOG" --relay-pid "$RELAY_PID" --relay-data "$DATA" --json \
        >"$WORK/ingest-$round.json" 2>"$WORK/ingest-$round.err" &
    bench=$!
    # Wait until acks are arriving, then kill -9 at a random moment of the run.
    for _ in $(seq 300); do
        (( $(lines) > before )) && break
        sleep 0.05
    done
    delay=$(awk -v seed="$RANDOM" -v run="$RUN_SECONDS" 'BEGIN { srand(seed); printf "%.3f", rand() * (run - 1) }')
    sleep "$delay"
    kill -9 "$RELAY_PID"
    wait "$RELAY_PID" 2>/dev/null || true
    RELAY_PID=
    wait "$bench" || echo "  (ingest exited with status $?; see $WORK/ingest-$round.err)"
    acked_round=$(( $(lines) - before ))

    if ! start_relay; then
        echo "round $round: the relay did not restart after kill -9" >&2
        failed=1
        break
    fi
    if "$BENCH" check --relay "$URL" --acked-log "$LOG" --relay-pid "$RELAY_PID" --relay-data "$DATA" --json \
        >"$WORK/check-$round.json" 2>"$WORK/check-$round.err"; then
        verdict=ok
    else
        verdict=FAILED
        failed=1
    fi
    echo "round $round: killed $delay s into the acks; acked this round $acked_round;" \
        "check: acked $(field acked "$WORK/check-$round.json"), found $(field found "$WORK/check-$round.json")," \
        "missing $(field missing "$WORK/check-$round.json"), unlogged $(field unlogged "$WORK/check-$round.json") -> $verdict"
    stop_relay
done

if (( failed )); then
    echo "crash check FAILED (details in $WORK)"
    exit 1
fi
echo "crash check passed: $ROUNDS rounds, every acknowledged record survived kill -9"
