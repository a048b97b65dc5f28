#!/usr/bin/env bash
# Cross-node throughput (docs/PERFORMANCE.md, "Across nodes"): the same p2p
# scenario on one node, and across two nodes (publishers on node 1 at
# 127.0.0.1, subscribers on node 2 at 127.0.0.2) with encryptInternalTraffic
# Enabled and Disabled, interleaved, ROUNDS rounds; prints the medians.
# Both brokers share CPU 1 (the single node has it alone), the harness CPU 0.
# WORKERS=N gives each cluster node N shards (default 1); BIN and LOADTEST
# pick other builds.
# usage: loadtest/scripts/cross-node.sh ROUNDS [loadtest run args...]
#   e.g. loadtest/scripts/cross-node.sh 5 p2p --publishers 4 --qos 1 --payload 64
# Needs: cargo build --release -p shardmq-io -p shardmq-loadtest
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BIN:-$PWD/target/release/shardmq}
L=${LOADTEST:-$PWD/target/release/shardmq-loadtest}
rounds=$1; shift
work=$(mktemp -d)
trap 'pkill -f -- "--config $work" || true; rm -rf "$work"' EXIT
"$B" --make-cluster-ca "$work/ca" >/dev/null
for mode in Enabled Disabled; do for i in 1 2; do j=$((3 - i))
  cat > "$work/$mode-$i.json" <<JSON
{"listeners":[{"name":"mqtt","ports":[{"port":$((18830 + i)),"bindAddress":"127.0.0.$i"}]}],
 "cardinality":{"frontend":{"workers":${WORKERS:-1}}}, "stateDir":"$work/state-$mode-$i",
 "diagnostics":{"logs":{"level":"warn"}}, "advanced":{"encryptInternalTraffic":"$mode"},
 "cluster":{"node":"node$i","address":"127.0.0.$i:$((17880 + i))",
   "peers":[{"node":"node$j","address":"127.0.0.$j:$((17880 + j))"}],
   "caCertFile":"$work/ca/ca.crt","caKeyFile":"$work/ca/ca.key"}}
JSON
done; done
echo '{"listeners":[{"name":"mqtt","ports":[{"port":18831,"bindAddress":"127.0.0.1"}]}],"cardinality":{"frontend":{"workers":1}},"diagnostics":{"logs":{"level":"warn"}}}' > "$work/single.json"
for r in $(seq 1 "$rounds"); do
  for set in single Enabled Disabled; do
    if [ "$set" = single ]; then
      taskset -c 1 "$B" --config "$work/single.json" >/dev/null 2>&1 & sub=()
    else
      taskset -c 1 "$B" --config "$work/$set-1.json" >/dev/null 2>&1 &
      taskset -c 1 "$B" --config "$work/$set-2.json" >/dev/null 2>&1 &
      sub=(--sub-broker 127.0.0.2:18832)
    fi
    sleep 1.5
    "$L" --cpu 0 run "$@" --broker 127.0.0.1:18831 "${sub[@]}" --json "$work/result-$set-$r.json" >/dev/null || true
    pkill -f -- "--config $work" || true; sleep 0.5
  done
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
med = {}
for s in ("single", "Enabled", "Disabled"):
    runs = [json.load(open(f"{work}/result-{s}-{r}.json")) for r in range(1, rounds + 1)]
    failed = sum(1 for r in runs if not r["received_per_s"])
    if failed:
        print(f"{s}: {failed} of {rounds} rounds received nothing (a broker did not start or link)")
    med[s] = statistics.median(r["received_per_s"] for r in runs)
    print(f"{s:9} {med[s]:>12,.0f} msg/s received (median of {rounds})")
print(f"Enabled / Disabled = {med['Enabled'] / med['Disabled']:.2f}; across nodes / one node = {med['Enabled'] / med['single']:.2f}")
PY
