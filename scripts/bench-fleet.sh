#!/usr/bin/env bash
# Measures a fleet on PostgreSQL: one API node and N worker nodes (separate
# processes, the sandbox with --roles), one vendor simulator, loaded by
# `herald bench steady --target`. Figures in docs/benchmarks.md.
#
#   scripts/bench-fleet.sh WORKERS [RATE] [SECONDS]
#
# Needs a release build (cargo build --release -p herald) and PostgreSQL at
# $HERALD_BENCH_POSTGRES_URL (default: the machine's, database `test`); it
# uses a schema of its own, `hb_fleet`, made afresh each run.
set -euo pipefail
workers=${1:?how many worker processes}
rate=${2:-8000}
seconds=${3:-20}
bin=${HERALD_BIN:-${CARGO_TARGET_DIR:-target}/release/herald}
db=${HERALD_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}

psql "$db" -qc "DROP SCHEMA IF EXISTS hb_fleet CASCADE; CREATE SCHEMA hb_fleet;" 2>/dev/null
export HERALD_DEV_API_KEY=hrld_fleet_bench_key_0123456789
export HERALD__STORE__KIND=postgres
export HERALD__STORE__URL="$db?options=-c%20search_path%3Dhb_fleet"
export RUST_LOG=${RUST_LOG:-warn}

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$bin" sim --listen 127.0.0.1:9190 >/dev/null 2>&1 & pids+=($!)
sleep 1
"$bin" serve --sim-url http://127.0.0.1:9190 --listen 127.0.0.1:8181 --roles api >/dev/null 2>&1 & pids+=($!)
sleep 3
for i in $(seq 1 "$workers"); do
  "$bin" serve --sim-url http://127.0.0.1:9190 --listen "127.0.0.1:$((8190 + i))" --roles worker \
    >/dev/null 2>&1 & pids+=($!)
done
sleep 3
"$bin" bench steady --target http://127.0.0.1:8181 --api-key "$HERALD_DEV_API_KEY" \
  --sim-url http://127.0.0.1:9190 --rate "$rate" --duration-seconds "$seconds" \
  --json "fleet-$workers.json"
