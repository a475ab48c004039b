#!/usr/bin/env bash
# bench-overlay.sh: vxbridge overlays across two lab hosts (scripts/lab.sh),
# side by side in one run with the bare underlay between the same hosts:
#   throughput   iperf3, one TCP stream, container on A -> container on B over
#                the overlay, and host A -> host B over the underlay
#   first packet a container started on B, pinged once (-c1 -W1) from A right
#                after `docker run -d` returns: how often it answers, and the
#                worst time until it does
#   run --rm     `docker run --rm --network OVERLAY IMAGE true` latency on A
# Needs the lab up (`make lab`); traffic stays inside the lab's namespaces.
# Usage (root, in the repo): BENCH_SECONDS=5 BENCH_REPEAT=3 BENCH_RUNS=20 bash tests/bench-overlay.sh
# Writes the table to tests/bench-overlay-results.md (BENCH_OUT).
set -euo pipefail

secs=${BENCH_SECONDS:-5}
repeat=${BENCH_REPEAT:-3}
runs=${BENCH_RUNS:-20}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${BENCH_OUT:-$repo/tests/bench-overlay-results.md}
image=vxbridge-test/busybox:latest
nw=vxbench

eval "$(bash "$repo/scripts/lab.sh" env)"
A=(docker -H "$DOCKER_HOST_A")
B=(docker -H "$DOCKER_HOST_B")
"${A[@]}" version >/dev/null 2>&1 || { echo "bench-overlay.sh: the lab is not up (make lab)" >&2; exit 1; }

cleanup() {
	"${A[@]}" rm -f bencha >/dev/null 2>&1 || true
	"${B[@]}" rm -f benchb >/dev/null 2>&1 || true
	for i in $(seq 0 "$runs"); do "${B[@]}" rm -f "benchfp$i" >/dev/null 2>&1 || true; done
	pkill -f "iperf3 -s -p 520[12]" 2>/dev/null || true
	"${A[@]}" network rm "$nw" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

"${A[@]}" network create -d vxbridge:latest --ipam-driver vxbridge:latest -o vxbridge.overlay=$nw --subnet 10.219.0.0/24 $nw >/dev/null
for _ in $(seq 1 100); do "${B[@]}" network inspect $nw >/dev/null 2>&1 && break; sleep 0.1; done
"${A[@]}" run -d --name bencha --network $nw $image sleep 3600 >/dev/null
"${B[@]}" run -d --name benchb --network $nw $image sleep 3600 >/dev/null
pidA=$("${A[@]}" inspect -f '{{.State.Pid}}' bencha)
pidB=$("${B[@]}" inspect -f '{{.State.Pid}}' benchb)
ipB=$("${B[@]}" inspect -f "{{(index .NetworkSettings.Networks \"$nw\").IPAddress}}" benchb)

gbits() { # iperf3 JSON on stdin -> Gbit/s received
	python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

nsenter -t "$pidB" -n iperf3 -s -p 5201 -D
ip netns exec "$NETNS_B" iperf3 -s -p 5202 -B "$UNDERLAY_IP_B" -D
sleep 0.5
ov=() ul=()
for _ in $(seq 1 "$repeat"); do
	ov+=("$(nsenter -t "$pidA" -n iperf3 -c "$ipB" -p 5201 -t "$secs" -J | gbits)")
	ul+=("$(ip netns exec "$NETNS_A" iperf3 -c "$UNDERLAY_IP_B" -p 5202 -t "$secs" -J | gbits)")
done

ok=0 worst=0
for i in $(seq 1 "$runs"); do
	"${B[@]}" run -d --name "benchfp$i" --network $nw $image sleep 600 >/dev/null
	ip=$("${B[@]}" inspect -f "{{(index .NetworkSettings.Networks \"$nw\").IPAddress}}" "benchfp$i")
	t0=$(date +%s%N)
	if "${A[@]}" exec bencha ping -c1 -W1 "$ip" >/dev/null 2>&1; then ok=$((ok + 1)); fi
	until "${A[@]}" exec bencha ping -c1 -W1 "$ip" >/dev/null 2>&1; do :; done
	ms=$((($(date +%s%N) - t0) / 1000000))
	[ "$ms" -gt "$worst" ] && worst=$ms
	"${B[@]}" rm -f "benchfp$i" >/dev/null
done

rm_ms=()
for _ in $(seq 1 10); do
	t0=$(date +%s%N)
	"${A[@]}" run --rm --network $nw $image true
	rm_ms+=($((($(date +%s%N) - t0) / 1000000)))
done

{
	echo "# Overlay benchmark (lab: two hosts of scripts/lab.sh, one machine)"
	echo
	echo "- date: $(date -u '+%F %T') UTC; kernel $(uname -r); $(nproc) CPUs; docker $("${A[@]}" version -f '{{.Server.Version}}')"
	echo "- reproduce (root, lab up): \`BENCH_SECONDS=$secs BENCH_REPEAT=$repeat BENCH_RUNS=$runs bash tests/bench-overlay.sh\`"
	echo
	echo "| measure | result | runs |"
	echo "|---|---:|---|"
	echo "| iperf3 container A -> container B over the vxbridge overlay, Gbit/s (median) | $(printf '%s\n' "${ov[@]}" | median) | ${ov[*]} |"
	echo "| iperf3 host A -> host B over the bare underlay, Gbit/s (median) | $(printf '%s\n' "${ul[@]}" | median) | ${ul[*]} |"
	echo "| first ping from A answered right after \`docker run -d\` on B returned | $ok of $runs | worst time to reachable ${worst} ms |"
	echo "| \`docker run --rm\` on the overlay, ms (median) | $(printf '%s\n' "${rm_ms[@]}" | median) | ${rm_ms[*]} |"
	echo
	echo "Docker's swarm overlay is not in this run: see the README (Benchmarks)."
} | tee "$out"
