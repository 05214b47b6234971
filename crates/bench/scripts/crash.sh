#!/usr/bin/env bash
# Crash safety: is every write the relay acknowledged still there after a kill -9?
#
# Each round: start `pigeonhole serve` on one fixed data directory, run
# `pigeonhole-bench ingest --acked-log` against it in the background, wait until acks are
# arriving, kill -9 the relay at a random moment of the run (while acks flow: the ingest
# must still be running when the signal lands), restart the relay on the same directory and run
# `pigeonhole-bench check` over the acked log. The log grows across rounds, so every round
# re-checks everything acknowledged before every earlier crash too.
#
# A round passes when acks arrived before the kill, the relay came back on its data
# directory, `check` found every acknowledged record (missing 0) and the relay then stopped
# cleanly on SIGTERM. The script stops at the first failed round, prints one line per round
# and a summary line, writes $WORK/summary.json, and exits 0 only if every round passed
# (1: a round failed; 2: bad setup, e.g. a binary missing).
#
# Usage (build first):
#   cargo build --release -p pigeonhole -p pigeonhole-bench
#   crates/bench/scripts/crash.sh                      # 20 rounds of 6 s
#   ROUNDS=3 RUN_SECONDS=2 CLIENTS=4 BIN=target/debug crates/bench/scripts/crash.sh
#
# Environment:
#   ROUNDS       rounds, each one kill -9 (default 20)
#   RUN_SECONDS  length of each round's ingest; the kill lands 0 … RUN_SECONDS-1 s after the
#                first ack (default 6; at least 1.5)
#   CLIENTS      ingest clients, closed loop on WebSocket sessions (default 16)
#   POOL         sealed envelopes per client (default 64)
#   ACK_TIMEOUT  seconds to wait for the first ack of a round (default 60)
#   SEED         seeds the kill moments ($RANDOM), for a repeatable schedule (default: random)
#   BIN          directory of both binaries (default target/release)
#   WORK         work directory (default a new temp dir; kept): data/, acked.txt, relay.log,
#                ingest-N.json/.err, check-N.json/.err, summary.json
#
# summary.json: {"passed", "failure", "rounds", "rounds_run", "rounds_passed",
# "acked_total" (lines of the acked log), "missing" (the largest count any check reported:
# a record once missing stays missing, so this is how many went missing), "per_round": [{"round",
# "kill_after_s", "ingest_running_at_kill", "acked_round" (acks logged this round),
# "in_flight_at_kill" (ingest's unanswered writes), "ingest_status", "relay_restarted",
# "check_status", "acked" (records checked: the whole log so far), "found", "missing",
# "unlogged", "relay_stop_status", "passed"}]}. Needs only bash, awk, sed and coreutils.
set -euo pipefail
exec </dev/null

ROUNDS=${ROUNDS:-20}
CLIENTS=${CLIENTS:-16}
RUN_SECONDS=${RUN_SECONDS:-6}
POOL=${POOL:-64}
ACK_TIMEOUT=${ACK_TIMEOUT:-60}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
RELAY=$BIN/pigeonhole
BENCH=$BIN/pigeonhole-bench
WORK=${WORK:-$(mktemp -d -t pigeonhole-crash.XXXXXX)}
DATA=$WORK/data
LOG=$WORK/acked.txt
SUMMARY=$WORK/summary.json
if [[ -n ${SEED:-} ]]; then RANDOM=$SEED; fi

usage_error() { echo "crash.sh: $*" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || usage_error "ROUNDS must be a positive integer, not '$ROUNDS'"
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || usage_error "CLIENTS must be a positive integer, not '$CLIENTS'"
[[ $POOL =~ ^[1-9][0-9]*$ ]] || usage_error "POOL must be a positive integer, not '$POOL'"
[[ $ACK_TIMEOUT =~ ^[1-9][0-9]*$ ]] || usage_error "ACK_TIMEOUT must be a positive integer, not '$ACK_TIMEOUT'"
awk -v s="$RUN_SECONDS" 'BEGIN { exit !(s ~ /^[0-9]+(\.[0-9]+)?$/ && s >= 1.5) }' ||
    usage_error "RUN_SECONDS must be a number of seconds, at least 1.5, not '$RUN_SECONDS'"
for binary in "$RELAY" "$BENCH"; do
    [[ -x $binary ]] || usage_error "missing $binary: cargo build --release -p pigeonhole -p pigeonhole-bench (or set BIN)"
done
mkdir -p "$WORK"
: >"$WORK/relay.log"

# The relay's per-IP and per-account limits would otherwise throttle one local benchmark
# (only the settings this relay knows are passed).
SETTINGS=()
known=$("$RELAY" serve --print-config)
for setting in limits.requests_per_sec_per_ip=1000000 limits.burst_per_ip=1000000 \
    limits.registrations_per_hour_per_ip=1000000 limits.writes_per_sec_per_account=1000000 \
    limits.write_burst_per_account=1000000 accounts.max_records_per_day=1000000000 \
    accounts.max_bytes=1099511627776; do
    key=${setting%%=*}
    if grep -q "^${key#*.} = " <<<"$known"; then SETTINGS+=(--set "$setting"); fi
done

RELAY_PID=
BENCH_PID=
URL=
start_relay() {
    : >"$WORK/relay.out"
    "$RELAY" serve --listen 127.0.0.1:0 --data "$DATA" "${SETTINGS[@]}" >"$WORK/relay.out" 2>>"$WORK/relay.log" &
    RELAY_PID=$!
    local _
    for _ in $(seq 300); do
        URL=$(sed -n 's/^listening on //p' "$WORK/relay.out" | head -n 1)
        [[ -n $URL ]] && return 0
        if ! kill -0 "$RELAY_PID" 2>/dev/null; then
            wait "$RELAY_PID" 2>/dev/null || true
            RELAY_PID=
            echo "the relay did not start on $DATA; its log:" >&2
            tail -n 20 "$WORK/relay.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "the relay printed no address within 30 s" >&2
    kill -9 "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
    RELAY_PID=
    return 1
}

# SIGTERM; the relay's exit status in STOP_STATUS (SIGKILL, and 137, after 30 s).
STOP_STATUS=
stop_relay() {
    local status=0 _
    if [[ -n $RELAY_PID ]]; then
        kill -TERM "$RELAY_PID" 2>/dev/null || true
        for _ in $(seq 300); do
            kill -0 "$RELAY_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$RELAY_PID" 2>/dev/null; then
            echo "the relay did not stop within 30 s of SIGTERM: killed" >&2
            kill -9 "$RELAY_PID" 2>/dev/null || true
        fi
        wait "$RELAY_PID" 2>/dev/null || status=$?
    fi
    RELAY_PID=
    STOP_STATUS=$status
}

cleanup() {
    if [[ -n $BENCH_PID ]]; then kill -TERM "$BENCH_PID" 2>/dev/null || true; fi
    if [[ -n $RELAY_PID ]]; then kill -9 "$RELAY_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

lines() { if [[ -f $LOG ]]; then wc -l <"$LOG" | tr -d ' '; else echo 0; fi; }
# A top-level number of a one-line JSON report, or null when absent.
field() {
    local value=
    if [[ -f $2 ]]; then value=$(sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p" "$2" | head -n 1); fi
    echo "${value:-null}"
}
json_string() { printf '"%s"' "$(sed 's/\\/\\\\/g; s/"/\\"/g' <<<"$1")"; }

PER_ROUND=()
rounds_passed=0
max_missing=0
failure=

write_summary() {
    local passed=false rounds_json
    [[ -z $failure ]] && passed=true
    rounds_json=$(IFS=,; echo "${PER_ROUND[*]:-}")
    printf '{"passed":%s,"failure":%s,"rounds":%s,"rounds_run":%s,"rounds_passed":%s,"acked_total":%s,"missing":%s,"clients":%s,"run_seconds":%s,"work":%s,"per_round":[%s]}\n' \
        "$passed" "$([[ -n $failure ]] && json_string "$failure" || echo null)" "$ROUNDS" "${#PER_ROUND[@]}" \
        "$rounds_passed" "$(lines)" "$max_missing" "$CLIENTS" "$RUN_SECONDS" "$(json_string "$WORK")" \
        "$rounds_json" >"$SUMMARY"
}

echo "work dir: $WORK (data: $DATA); $ROUNDS rounds of $RUN_SECONDS s, $CLIENTS clients"
for round in $(seq "$ROUNDS"); do
    echo "--- round $round" >>"$WORK/relay.log"
    kill_after=null running_at_kill=false acked_round=0 in_flight=null ingest_status=null
    restarted=false check_status=null stop_status=null round_failure=
    ingest_json=$WORK/ingest-$round.json check_json=$WORK/check-$round.json

    if ! start_relay; then
        round_failure="the relay did not start"
    else
        before=$(lines)
        "$BENCH" ingest --relay "$URL" --clients "$CLIENTS" --seconds "$RUN_SECONDS" --warmup 0 --pool "$POOL" \
            --acked-log "$LOG" --relay-pid "$RELAY_PID" --relay-data "$DATA" --json \
            >"$ingest_json" 2>"$WORK/ingest-$round.err" &
        BENCH_PID=$!
        # Wait until acks are arriving (the log is flushed every 100 ms).
        deadline=$((SECONDS + ACK_TIMEOUT))
        while (($(lines) <= before)) && kill -0 "$BENCH_PID" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.05
        done
        if (($(lines) <= before)); then
            round_failure="no acks within $ACK_TIMEOUT s (see $WORK/ingest-$round.err)"
            kill -9 "$RELAY_PID" 2>/dev/null || true
        else
            kill_after=$(awk -v seed="$RANDOM" -v run="$RUN_SECONDS" 'BEGIN { srand(seed); printf "%.3f", rand() * (run - 1) }')
            sleep "$kill_after"
            if kill -0 "$BENCH_PID" 2>/dev/null; then running_at_kill=true; fi
            kill -9 "$RELAY_PID"
        fi
        wait "$RELAY_PID" 2>/dev/null || true
        RELAY_PID=
        ingest_status=0
        wait "$BENCH_PID" || ingest_status=$?
        BENCH_PID=
        acked_round=$(($(lines) - before))
        in_flight=$(field unanswered "$ingest_json")
        if [[ -z $round_failure && $running_at_kill != true ]]; then
            round_failure="the ingest had ended before the kill (acks were not flowing): raise RUN_SECONDS"
        fi

        if ! start_relay; then
            round_failure=${round_failure:-"the relay did not restart after kill -9 (see $WORK/relay.log)"}
        else
            restarted=true
            check_status=0
            "$BENCH" check --relay "$URL" --acked-log "$LOG" --relay-pid "$RELAY_PID" --relay-data "$DATA" --json \
                >"$check_json" 2>"$WORK/check-$round.err" || check_status=$?
            stop_relay
            stop_status=$STOP_STATUS
            missing=$(field missing "$check_json")
            if [[ $missing == null ]]; then
                round_failure=${round_failure:-"check failed with status $check_status (see $WORK/check-$round.err)"}
            else
                ((missing > max_missing)) && max_missing=$missing
                if ((missing > 0)); then
                    round_failure=${round_failure:-"$missing acknowledged records missing (sample in $check_json)"}
                elif ((check_status != 0)); then
                    round_failure=${round_failure:-"check exited with status $check_status"}
                fi
            fi
            if [[ -z $round_failure && $stop_status != 0 ]]; then
                round_failure="the relay exited with status $stop_status on SIGTERM (see $WORK/relay.log)"
            fi
        fi
    fi

    passed=true
    [[ -n $round_failure ]] && passed=false
    [[ $passed == true ]] && rounds_passed=$((rounds_passed + 1))
    PER_ROUND+=("$(printf '{"round":%s,"kill_after_s":%s,"ingest_running_at_kill":%s,"acked_round":%s,"in_flight_at_kill":%s,"ingest_status":%s,"relay_restarted":%s,"check_status":%s,"acked":%s,"found":%s,"missing":%s,"unlogged":%s,"relay_stop_status":%s,"passed":%s}' \
        "$round" "$kill_after" "$running_at_kill" "$acked_round" "$in_flight" "$ingest_status" "$restarted" \
        "$check_status" "$(field acked "$check_json")" "$(field found "$check_json")" "$(field missing "$check_json")" \
        "$(field unlogged "$check_json")" "$stop_status" "$passed")")
    echo "round $round: killed $kill_after s into the acks ($in_flight in flight); acked this round $acked_round;" \
        "check: acked $(field acked "$check_json"), found $(field found "$check_json")," \
        "missing $(field missing "$check_json"), unlogged $(field unlogged "$check_json") -> $([[ $passed == true ]] && echo ok || echo "FAILED: $round_failure")"
    if [[ -n $round_failure ]]; then
        failure="round $round: $round_failure"
        break
    fi
done
write_summary

if [[ -n $failure ]]; then
    echo "crash check FAILED: $failure; $rounds_passed of $ROUNDS rounds passed, $(lines) acknowledged records, $max_missing missing (summary: $SUMMARY)"
    exit 1
fi
echo "crash check passed: $ROUNDS rounds, $(lines) acknowledged records, $max_missing missing (summary: $SUMMARY)"
