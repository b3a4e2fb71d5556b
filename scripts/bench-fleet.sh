#!/usr/bin/env bash
# Measures a fleet on PostgreSQL: one API node and N worker nodes (separate
# processes, the sandbox with --roles), one vendor simulator, loaded by
# `herald bench steady --target`. Figures in docs/benchmarks.md.
#
#   scripts/bench-fleet.sh [--kafka] WORKERS [RATE] [SECONDS]
#
# With --kafka the bus is Kafka: `herald kafka-mock` (librdkafka's mock
# cluster, 8 partitions per lane topic) in a process of its own, the API
# node also relays the outbox (--roles api,relay), and the workers consume
# in one group per channel.
#
# Needs a release build (cargo build --release -p herald) and PostgreSQL at
# $HERALD_BENCH_POSTGRES_URL (default: the machine's, database `test`); it
# uses a schema of its own, `hb_fleet`, made afresh each run. Besides the
# bench's report it prints the whole machine's CPU per delivery.
set -euo pipefail
kafka=false
if [[ ${1:-} == --kafka ]]; then kafka=true; shift; fi
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
worker_pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$bin" sim --listen 127.0.0.1:9190 >/dev/null 2>&1 & pids+=($!)
sim=$!
api_roles=api
name=fleet-$workers
if $kafka; then
  brokers_file=$(mktemp)
  "$bin" kafka-mock --partitions 8 >"$brokers_file" 2>/dev/null & pids+=($!)
  mock=$!
  for _ in $(seq 50); do [[ -s $brokers_file ]] && break; sleep 0.1; done
  export HERALD__KAFKA__BROKERS=$(head -n1 "$brokers_file")
  rm -f "$brokers_file"
  [[ -n $HERALD__KAFKA__BROKERS ]] || { echo "the mock Kafka cluster did not start" >&2; exit 1; }
  api_roles=api,relay
  name=fleet-kafka-$workers
fi
sleep 1
"$bin" serve --sim-url http://127.0.0.1:9190 --listen 127.0.0.1:8181 --roles "$api_roles" >/dev/null 2>&1 & pids+=($!)
api=$!
sleep 3
for i in $(seq 1 "$workers"); do
  "$bin" serve --sim-url http://127.0.0.1:9190 --listen "127.0.0.1:$((8190 + i))" --roles worker \
    >/dev/null 2>&1 & pids+=($!)
  worker_pids+=($!)
done
sleep 3
# A node that could not start (a port still held by an earlier run's
# process, say) would leave the fleet short and the figures wrong.
for pid in "${pids[@]}"; do
  kill -0 "$pid" 2>/dev/null || { echo "a fleet process exited at start (port in use?)" >&2; exit 1; }
done
# The whole machine's busy time over the run (every process: the nodes,
# PostgreSQL, the mock cluster, the simulator and the bench itself), and
# each part's own (user + system ticks): the mock cluster's is what a real
# broker on machines of its own would not take from these two cores.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
ticks() { local t=0 p; for p in "$@"; do [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
parts() {
  echo "$(ticks "$api") $(ticks "${worker_pids[@]}") $(ticks ${mock:-}) $(ticks "$sim") $(ticks $(pgrep -x postgres))"
}
before=$(busy)
parts_before=$(parts)
"$bin" bench steady --target http://127.0.0.1:8181 --api-key "$HERALD_DEV_API_KEY" \
  --sim-url http://127.0.0.1:9190 --rate "$rate" --duration-seconds "$seconds" \
  --json "$name.json" ${HERALD_BENCH_ARGS:-}
after=$(busy)
parts_after=$(parts)
python3 - "$name.json" "$((after - before))" "$(getconf CLK_TCK)" "$parts_before" "$parts_after" <<'EOF2'
import json, sys
r = json.load(open(sys.argv[1]))
per = lambda ticks: int(ticks) * 1000 / int(sys.argv[3]) / max(r["delivered"], 1)
parts = [b - a for a, b in zip(map(int, sys.argv[4].split()), map(int, sys.argv[5].split()))]
whole = int(sys.argv[2])
names = ["API node", "workers", "mock Kafka", "simulator", "PostgreSQL"]
shares = ", ".join(f"{n} {per(t):.3f}" for n, t in zip(names, parts) if t or n != "mock Kafka")
print(f"whole machine: {per(whole):.3f} ms of CPU per delivery ({r['delivered']} delivered)")
print(f"  of which {shares}, the rest (the bench, the OS) {per(whole - sum(parts)):.3f}")
EOF2
