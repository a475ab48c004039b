#!/usr/bin/env bash
# bench-overlay.sh: overlays between two lab hosts (scripts/lab.sh), side by
# side in one run:
#   vxbridge      a vxbridge overlay (-o vxbridge.overlay)
#   swarm         Docker's own overlay: swarm on the lab's dockerds (A manager,
#                 B worker), an attachable overlay, its VXLAN on UDP 4790
#                 (--data-path-port) so it never meets vxbridge's 4789
#   hand-made     a plain VXLAN device between the two lab hosts (UDP 4791)
#   underlay      the lab hosts' own link
# Measures, per case where it applies:
#   throughput    iperf3, one TCP stream, A -> B (containers for the two
#                 overlays, host namespaces for hand-made and underlay)
#   first packet  a container started on B, pinged once (-c1 -W1) from A right
#                 after `docker run -d` returns: how often it answers, and the
#                 worst time until it does
#   run --rm      `docker run --rm --network NET IMAGE true` latency on A
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

eval "$(bash "$repo/scripts/lab.sh" env)"
A=(docker -H "$DOCKER_HOST_A")
B=(docker -H "$DOCKER_HOST_B")
"${A[@]}" version >/dev/null 2>&1 || { echo "bench-overlay.sh: the lab is not up (make lab)" >&2; exit 1; }

log() { echo "bench-overlay.sh: $*" >&2; }

cleanup() {
	local c
	for c in vxa swa; do "${A[@]}" rm -f "$c" >/dev/null 2>&1 || true; done
	for c in vxb swb $(seq -f 'fp%g' 0 "$runs"); do "${B[@]}" rm -f "$c" >/dev/null 2>&1 || true; done
	pkill -f "iperf3 -s -p 52[0-9][0-9]" 2>/dev/null || true
	"${A[@]}" network rm vxbench swbench >/dev/null 2>&1 || true
	"${B[@]}" swarm leave --force >/dev/null 2>&1 || true
	"${A[@]}" swarm leave --force >/dev/null 2>&1 || true
	ip -n "$NETNS_A" link del vxhand 2>/dev/null || true
	ip -n "$NETNS_B" link del vxhand 2>/dev/null || true
}
trap cleanup EXIT
cleanup

gbits() { # iperf3 JSON on stdin -> Gbit/s received
	python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "-"; else print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
pid_of() { "${@:1:3}" inspect -f '{{.State.Pid}}' "$4"; }
ip_of() { "${@:1:3}" inspect -f "{{(index .NetworkSettings.Networks \"$5\").IPAddress}}" "$4"; }

# throughput NAME SERVER-NSENTER-ARGS CLIENT-NSENTER-ARGS ADDR PORT: medians into tp[NAME]
declare -A tp tpruns fp rm
throughput() {
	local name=$1 srv=$2 cli=$3 addr=$4 port=$5 r=() i
	# shellcheck disable=SC2086 # the nsenter arguments are lists
	nsenter $srv iperf3 -s -p "$port" -D
	sleep 0.5
	for ((i = 0; i < repeat; i++)); do
		# shellcheck disable=SC2086
		r+=("$(nsenter $cli iperf3 -c "$addr" -p "$port" -t "$secs" -J | gbits)")
	done
	tp[$name]=$(printf '%s\n' "${r[@]}" | median)
	tpruns[$name]="${r[*]}"
}

# firstpacket NAME NET: how often B's new container answers A's first ping
firstpacket() {
	local name=$1 net=$2 ok=0 worst=0 i ip t0 ms
	for ((i = 1; i <= runs; i++)); do
		"${B[@]}" run -d --name "fp$i" --network "$net" "$image" sleep 600 >/dev/null
		ip=$(ip_of docker -H "$DOCKER_HOST_B" "fp$i" "$net")
		t0=$(date +%s%N)
		if "${A[@]}" exec "${name:0:2}a" ping -c1 -W1 "$ip" >/dev/null 2>&1; then ok=$((ok + 1)); fi
		until "${A[@]}" exec "${name:0:2}a" ping -c1 -W1 "$ip" >/dev/null 2>&1; do :; done
		ms=$((($(date +%s%N) - t0) / 1000000))
		[ "$ms" -gt "$worst" ] && worst=$ms
		"${B[@]}" rm -f "fp$i" >/dev/null
	done
	fp[$name]="$ok of $runs (worst $worst ms to reachable)"
}

# runrm NAME NET: median `docker run --rm` on A, 10 runs
runrm() {
	local name=$1 net=$2 r=() i t0
	for ((i = 0; i < 10; i++)); do
		t0=$(date +%s%N)
		"${A[@]}" run --rm --network "$net" "$image" true
		r+=($((($(date +%s%N) - t0) / 1000000)))
	done
	rm[$name]="$(printf '%s\n' "${r[@]}" | median) (${r[*]})"
}

# overlaycase NAME NET: containers NAMEa on A and NAMEb on B, then the three measures
overlaycase() {
	local name=$1 net=$2 pa pb ipb
	"${A[@]}" run -d --name "${name:0:2}a" --network "$net" "$image" sleep 3600 >/dev/null
	"${B[@]}" run -d --name "${name:0:2}b" --network "$net" "$image" sleep 3600 >/dev/null
	pa=$(pid_of docker -H "$DOCKER_HOST_A" "${name:0:2}a")
	pb=$(pid_of docker -H "$DOCKER_HOST_B" "${name:0:2}b")
	ipb=$(ip_of docker -H "$DOCKER_HOST_B" "${name:0:2}b" "$net")
	throughput "$name" "-t $pb -n" "-t $pa -n" "$ipb" "$3"
	firstpacket "$name" "$net"
	runrm "$name" "$net"
}

# vxbridge
"${A[@]}" network create -d vxbridge:latest --ipam-driver vxbridge:latest -o vxbridge.overlay=vxbench --subnet 10.219.0.0/24 vxbench >/dev/null
for _ in $(seq 1 100); do "${B[@]}" network inspect vxbench >/dev/null 2>&1 && break; sleep 0.1; done
overlaycase vxbridge vxbench 5201

# swarm
swarm=ok
if "${A[@]}" swarm init --advertise-addr "$UNDERLAY_IP_A" --listen-addr "$UNDERLAY_IP_A:2377" --data-path-port 4790 >/dev/null 2>&1 &&
	token=$("${A[@]}" swarm join-token -q worker) &&
	"${B[@]}" swarm join --token "$token" --advertise-addr "$UNDERLAY_IP_B" "$UNDERLAY_IP_A:2377" >/dev/null 2>&1 &&
	"${A[@]}" network create -d overlay --attachable --subnet 10.226.0.0/24 swbench >/dev/null 2>&1; then
	overlaycase swarm swbench 5202
else
	swarm="could not be set up in this lab"
	log "swarm: $swarm"
fi

# hand-made VXLAN and the underlay, host to host
for h in A B; do
	ns=NETNS_$h ip=UNDERLAY_IP_$h peer=UNDERLAY_IP_$([ $h = A ] && echo B || echo A)
	ip -n "${!ns}" link add vxhand type vxlan id 4243 local "${!ip}" remote "${!peer}" dstport 4791 dev eth0
	ip -n "${!ns}" addr add "10.251.0.$([ $h = A ] && echo 1 || echo 2)/24" dev vxhand
	ip -n "${!ns}" link set vxhand mtu 1450 up
done
throughput hand-made "--net=/run/netns/$NETNS_B" "--net=/run/netns/$NETNS_A" 10.251.0.2 5203
throughput underlay "--net=/run/netns/$NETNS_B" "--net=/run/netns/$NETNS_A" "$UNDERLAY_IP_B" 5204

{
	echo "# Overlay benchmark (lab: two hosts of scripts/lab.sh, one machine)"
	echo
	echo "- date: $(date -u '+%F %T') UTC; kernel $(uname -r); $(nproc) CPUs; docker $("${A[@]}" version -f '{{.Server.Version}}')"
	echo "- reproduce (root, lab up): \`BENCH_SECONDS=$secs BENCH_REPEAT=$repeat BENCH_RUNS=$runs bash tests/bench-overlay.sh\`"
	echo
	echo "| case | iperf3 A -> B, Gbit/s (median) | runs | first ping answered right after \`docker run -d\` | \`docker run --rm\`, ms (median, runs) |"
	echo "|---|---:|---|---|---|"
	for c in vxbridge swarm hand-made underlay; do
		if [ "$c" = swarm ] && [ "$swarm" != ok ]; then
			echo "| swarm | $swarm | | | |"
			continue
		fi
		echo "| $c | ${tp[$c]:--} | ${tpruns[$c]:-} | ${fp[$c]:--} | ${rm[$c]:--} |"
	done
} | tee "$out"
