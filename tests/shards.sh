#!/usr/bin/env bash
# `make test`: the suite as two pytest processes at once, each on a Kafka and a PostgreSQL
# of its own (its own TIDEMARK_STATE_DIR), because one after the other it no longer fits
# CI's 30 minutes on a 2-core machine. The end-to-end modules spend most of their time
# waiting on services, subprocesses and real time, so the rest of the suite fills that time.
#
#   e2e   tests/e2e, state in $STATE_DIR/e2e, itself split by module over $E2E_WORKERS
#         pytest-xdist workers (default 2), each with its own Kafka and PostgreSQL
#         ($STATE_DIR/e2e/test/gw0, ...) and its own stack of services
#   rest  libs, services and tests/ but tests/e2e, state in $STATE_DIR (as a plain `pytest`
#         uses)
#
# Both print as they go, each line prefixed with its shard; each shard's tail (its failure
# summary) is printed again at the end. Exit status: pytest's own, the first non-zero of the
# two. A shard that collected nothing (5) fails the run, except when arguments narrow it (a -k
# that only matches the other shard); then only both collecting nothing does.
#
# Environment: UV_RUN (how to run pytest), STATE_DIR, PYTEST_STATUS_FILE (optional: pytest's
# status is written there). Arguments: extra pytest arguments for both shards.
set -uo pipefail

UV_RUN=${UV_RUN:-uv run --frozen}
STATE_DIR=${STATE_DIR:-$(pwd)/.state}
mkdir -p "$STATE_DIR/e2e"
logs=$(mktemp -d)

run_shard() { # NAME STATE_DIR PATHS... -- ARGS...: runs pytest, prefixes its lines, keeps a copy
    local name=$1 state=$2
    shift 2
    # shellcheck disable=SC2086
    TIDEMARK_STATE_DIR=$state $UV_RUN pytest "$@" 2>&1 \
        | tee "$logs/$name.log" | sed -u "s/^/$name| /"
    echo "${PIPESTATUS[0]}" >"$logs/$name.status"
}

E2E_WORKERS=${E2E_WORKERS:-2}
run_shard e2e "$STATE_DIR/e2e" -n "$E2E_WORKERS" --dist loadfile tests/e2e "$@" &
e2e_pid=$!
run_shard rest "$STATE_DIR" libs services tests --ignore=tests/e2e "$@" &
rest_pid=$!
# A stop of this script stops everything it started: pytest, its workers and their servers
# (the process group, as Ctrl-C in a terminal or CI's timeout would).
trap 'trap - INT TERM; kill -TERM 0 2>/dev/null; exit 130' INT TERM
wait $e2e_pid $rest_pid

status=0
all_empty=1
narrowed=0
for arg in "$@"; do
    case "$arg" in -k | -k?* | -m | -m?* | --deselect*) narrowed=1 ;; esac
done
for name in e2e rest; do
    code=$(cat "$logs/$name.status" 2>/dev/null || echo 1)
    echo
    echo "================ shard $name: pytest exit $code ================"
    # The shard's summary: from its "short test summary" (or its last lines) to its end.
    if grep -q "short test summary info" "$logs/$name.log"; then
        sed -n '/short test summary info/,$p' "$logs/$name.log"
    else
        tail -n 15 "$logs/$name.log"
    fi
    [ "$code" -ne 5 ] && all_empty=0
    if [ "$code" -eq 5 ] && [ "$narrowed" -eq 1 ]; then
        continue  # narrowed by arguments to the other shard's tests
    fi
    if [ "$status" -eq 0 ] && [ "$code" -ne 0 ]; then
        status=$code
    fi
done
[ "$all_empty" -eq 1 ] && status=5
rm -rf "$logs"
if [ -n "${PYTEST_STATUS_FILE:-}" ]; then echo "$status" >"$PYTEST_STATUS_FILE"; fi
exit "$status"
