#!/usr/bin/env bash
# One `herald bench` run on PostgreSQL, with what the database spent: the
# figures of docs/benchmarks.md's "fleet path's cost on PostgreSQL".
#
#   scripts/bench-pg.sh LABEL [bench arguments…]
#   e.g. scripts/bench-pg.sh new --rate 2000 --endpoint single --connections 64
#
# Each run gets a fresh schema (`hb_bench`). CPU is Herald's process CPU (as
# the bench reports it) plus every `postgres` process's (user + system,
# read from /proc every 200 ms, each PID's last reading minus its first,
# so connections that come and go count), divided by deliveries. With
# `pg_stat_statements` loaded it also counts statements and commits per
# delivery. Prints one line; the bench's JSON is kept in LABEL.json.
#
# Needs a release build (HERALD_BIN, default target/release/herald), psql
# and python3, and PostgreSQL at $HERALD_BENCH_POSTGRES_URL (default: the
# machine's, database `test`).
set -euo pipefail
label=${1:?a label for the run}
shift
bin=${HERALD_BIN:-${CARGO_TARGET_DIR:-target}/release/herald}
db=${HERALD_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}

psql "$db" -qc "DROP SCHEMA IF EXISTS hb_bench CASCADE" -c "CREATE SCHEMA hb_bench" 2>/dev/null
statements=$(psql "$db" -Atc "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
[[ $statements == 1 ]] && psql "$db" -qAtc "SELECT pg_stat_statements_reset()" >/dev/null
commits_before=$(psql "$db" -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
busy=$(cut -d' ' -f1 /proc/loadavg)

cpu_file=$(mktemp)
python3 - "$cpu_file" <<'EOF' &
import os, sys, time, signal
first, last, hz = {}, {}, os.sysconf("SC_CLK_TCK")
def done(*_):
    open(sys.argv[1], "w").write(str(sum(last[p] - first[p] for p in last) / hz))
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name.startswith("postgres"):
            ticks = int(rest[11]) + int(rest[12])
            first.setdefault(pid, ticks)
            last[pid] = ticks
    time.sleep(0.2)
EOF
sampler=$!
sleep 0.5

HERALD__STORE__KIND=postgres \
HERALD__STORE__URL="$db?options=-c%20search_path%3Dhb_bench" \
  "$bin" bench steady --duration-seconds "${HERALD_BENCH_SECONDS:-20}" --quiet --json "$label.json" "$@" >/dev/null

kill "$sampler"
wait "$sampler" 2>/dev/null || true
pg_cpu=$(cat "$cpu_file")
rm -f "$cpu_file"
commits=$(( $(psql "$db" -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()") - commits_before ))
calls=0
[[ $statements == 1 ]] && calls=$(psql "$db" -Atc "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query !~* '^(begin|commit|rollback)'")

python3 - "$label" "$label.json" "$pg_cpu" "$commits" "$calls" "$busy" <<'EOF'
import json, sys
label, path, pg_cpu, commits, calls, busy = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
r = json.load(open(path))
n = max(r["delivered"], 1)
herald = r["herald_process"]["cpu_seconds"] * 1000 / n
pg = pg_cpu * 1000 / n
p99 = " ".join(f"{lane} {v['p99']}" for lane, v in r["accept_to_vendor_ms"].items())
print(f"{label}: load {busy} | {r['delivered_per_second']:.0f}/s delivered | "
      f"Herald {herald:.3f} + PG {pg:.3f} = {herald + pg:.3f} ms/delivery | "
      f"commits {commits / n:.2f}, statements {calls / n:.2f} per delivery | "
      f"p99 ms: {p99} | lost {r['lost']} dup {r['duplicated']}")
EOF
