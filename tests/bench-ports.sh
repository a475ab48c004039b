#!/usr/bin/env bash
# bench-ports.sh: TCP throughput through a published port (-p HOSTPORT:5201),
# measured side by side in one run for three cases:
#   vxbridge        a vxbridge:latest network; the plugin publishes the port
#   bridge+proxy    Docker's bridge driver on the host dockerd (userland proxy on)
#   bridge-noproxy  Docker's bridge driver with --userland-proxy=false; that is
#                   daemon-wide, so a second dockerd runs in a network namespace
# An iperf3 server runs in a container of each. Each case is measured on two
# paths:
#   from another machine  the iperf3 client runs in a namespace of its own,
#                         joined by veth pairs with documentation-range
#                         addresses, and aims at the veth peer address; all
#                         three cases take kernel DNAT here (PREROUTING)
#   from the host         the client runs on the case's host (the host itself;
#                         for bridge-noproxy, the second dockerd's namespace)
#                         and aims at 127.0.0.1:HOSTPORT: Docker's OUTPUT rule
#                         skips 127.0.0.0/8 while the userland proxy is on, so
#                         docker-proxy carries it; vxbridge and bridge-noproxy
#                         DNAT it (route_localnet on the bridge, masquerade)
# Targets are only those veth addresses and loopback. Every measured run
# records whether the kernel DNAT rule for its port matched (nat counters
# before/after) and whether docker-proxy held connections on the port.
#
# Usage (root, from anywhere):
#   BENCH_SECONDS=10 BENCH_REPEAT=3 bash tests/bench-ports.sh
# Tunables: BENCH_SECONDS (10) per iperf3 run, BENCH_REPEAT (3) runs per case and path,
#   BENCH_PORT (18201) first host port (uses 3 in a row), BENCH_OUT (results file).
# Prints a table and writes it to tests/bench-results.md. Everything it makes is
# named vxbench* and removed on exit; the image vxbridge-bench/iperf3:latest stays.
set -euo pipefail

secs=${BENCH_SECONDS:-10}
repeat=${BENCH_REPEAT:-3}
port0=${BENCH_PORT:-18201}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${BENCH_OUT:-$repo/tests/bench-results.md}

image=vxbridge-bench/iperf3:latest
plugin=vxbridge:latest
# Fixed names: the e2e tests use vxt-, so nothing here collides with them.
ns_cli=vxbench-cli # the client "machine"
ns_d2=vxbench-d2   # the second dockerd's "machine"
# host <-> client: 198.51.100.0/24; second dockerd <-> client: 203.0.113.0/24.
host_ip=198.51.100.1 cli_ip0=198.51.100.2
d2_ip=203.0.113.1 cli_ip1=203.0.113.2
tmp=
bg= # the iperf3 client running in the background, if any

log() { echo "bench-ports: $*" >&2; }
die() {
	log "$*"
	exit 1
}

d2() { docker -H "unix://$tmp/docker.sock" "$@"; }
in_d2() { ip netns exec "$ns_d2" "$@"; }

# kill_wait PID...: TERM, up to 20 s for them to end, then KILL.
kill_wait() {
	local i p left
	[ $# -gt 0 ] || return 0
	kill -TERM "$@" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		left=
		for p in "$@"; do kill -0 "$p" 2>/dev/null && left=1; done
		[ -n "$left" ] || return 0
		sleep 0.2
	done
	kill -KILL "$@" 2>/dev/null || true
	sleep 0.2
}

# cleanup removes every vxbench object; it also runs first, to clear what a
# run killed with SIGKILL left. Best effort: it must get through everything.
cleanup() {
	local ids pids d
	set +e
	# A client still running (the run was interrupted); timeout passes the
	# TERM on to iperf3.
	[ -z "$bg" ] || kill_wait "$bg"
	bg=
	# shellcheck disable=SC2086 # one argument per id
	{
		ids=$(docker ps -aq --filter name=vxbench)
		[ -z "$ids" ] || docker rm -f $ids >/dev/null
		ids=$(docker network ls -q --filter name=vxbench)
		[ -z "$ids" ] || docker network rm $ids >/dev/null
		if [ -n "$tmp" ] && [ -S "$tmp/docker.sock" ]; then
			ids=$(d2 ps -aq 2>/dev/null)
			[ -z "$ids" ] || d2 rm -f $ids >/dev/null
		fi
	}
	# The second dockerd, its containerd and shims all live in $ns_d2: they
	# are ours, and a dockerd stopped with TERM also stops its containers.
	if [ -e "/run/netns/$ns_d2" ]; then
		pids=$(ip netns pids "$ns_d2" 2>/dev/null | tr '\n' ' ')
		# shellcheck disable=SC2086 # one argument per pid
		kill_wait $pids
		ip netns del "$ns_d2"
	fi
	if [ -e "/run/netns/$ns_cli" ]; then
		pids=$(ip netns pids "$ns_cli" 2>/dev/null | tr '\n' ' ')
		# shellcheck disable=SC2086 # one argument per pid
		kill_wait $pids
		ip netns del "$ns_cli"
	fi
	# Deleting a namespace deletes its veth ends and so their peers; this
	# catches a host end whose peer never got moved.
	ip link del vxbench-h0 2>/dev/null
	# Temp dirs of this run or of an aborted one; the flock below guarantees
	# no other run owns them. A dir with a mount left in it is kept.
	for d in "${TMPDIR:-/tmp}"/vxbench.*; do
		[ -d "$d" ] || continue
		if grep -q " $d/" /proc/mounts; then
			log "left $d: something is still mounted in it"
		else
			rm -rf "$d"
		fi
	done
	set -e
}

on_exit() {
	local rc=$?
	trap - EXIT
	cleanup
	exit "$rc"
}

# build_image makes the iperf3 image from the host's own binary and
# libraries, and busybox for a shell: no registry here.
build_image() {
	local root=$tmp/rootfs d lib applet
	if docker image inspect "$image" >/dev/null 2>&1; then
		return 0
	fi
	log "building $image"
	! ldd /bin/busybox >/dev/null 2>&1 || die "/bin/busybox is dynamic: install busybox-static"
	mkdir -p "$root"
	# Mirror the merged-/usr links so the paths ldd prints resolve the same.
	for d in bin sbin lib lib64; do
		if [ -L "/$d" ]; then
			mkdir -p "$root/$(readlink "/$d")"
			ln -s "$(readlink "/$d")" "$root/$d"
		fi
	done
	mkdir -p "$root/usr/bin" "$root/bin" "$root/tmp"
	chmod 1777 "$root/tmp" # iperf3 -s keeps a buffer file in /tmp
	cp -L /usr/bin/iperf3 "$root/usr/bin/iperf3"
	# "lib => /path (addr)" and the loader's "/path (addr)".
	for lib in $(ldd /usr/bin/iperf3 | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
	cp /bin/busybox "$root/bin/busybox"
	for applet in $(/bin/busybox --list); do
		[ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
	done
	tar -C "$root" --numeric-owner -c . |
		docker import \
			--change 'CMD ["/usr/bin/iperf3", "-s"]' \
			--change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
			- "$image" >/dev/null
	rm -rf "$root"
	# A missing library would only show when the server is needed.
	docker run --rm --name vxbench-check --network none "$image" iperf3 --version >/dev/null ||
		die "$image does not run iperf3"
}

# veth_pair HOST_NS HOST_END HOST_IP CLI_END CLI_IP: a point-to-point link
# from the client namespace to a "machine" ("" for the host itself).
veth_pair() {
	local ns=$1 hend=$2 hip=$3 cend=$4 cip=$5
	local -a n=()
	[ -z "$ns" ] || n=(-n "$ns")
	ip "${n[@]}" link add "$hend" type veth peer name "$cend" netns "$ns_cli"
	ip "${n[@]}" addr add "$hip/24" dev "$hend"
	ip "${n[@]}" link set "$hend" up
	ip -n "$ns_cli" addr add "$cip/24" dev "$cend"
	ip -n "$ns_cli" link set "$cend" up
}

# start_d2 runs the second dockerd the way the lab does: nsenter (not `ip
# netns exec`, which remounts /sys and hides the cgroups dockerd needs) plus
# a private mount namespace, so it has its own /etc/docker and /run/docker.
start_d2() {
	local i
	mkdir -p "$tmp/etc" "$tmp/run" "$tmp/data" "$tmp/exec"
	# shellcheck disable=SC2016 # expanded by the inner shell
	setsid nsenter --net="/run/netns/$ns_d2" -- \
		unshare --mount --uts --propagation slave -- /bin/sh -c '
			set -e
			hostname vxbench-d2
			mkdir -p /etc/docker /run/docker
			mount --bind "$0/etc" /etc/docker
			mount --bind "$0/run" /run/docker
			exec dockerd --data-root "$0/data" --exec-root "$0/exec" \
				--pidfile "$0/docker.pid" -H "unix://$0/docker.sock" \
				--bridge none --userland-proxy=false' "$tmp" \
		>"$tmp/dockerd.log" 2>&1 </dev/null &
	for ((i = 0; i < 300; i++)); do
		d2 version >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	tail -n 20 "$tmp/dockerd.log" >&2
	die "second dockerd did not answer within 30 s"
}

# iperf_bg NS ADDR PORT SECS: starts one iperf3 client run in the
# background, in namespace NS ("" for the host itself), its pid in $bg and
# its output in $tmp/iperf.out. timeout bounds it even if the server stalls;
# `ip netns exec` execs, so $bg is timeout itself.
iperf_bg() {
	local -a pre=()
	[ -z "$1" ] || pre=(ip netns exec "$1")
	"${pre[@]}" timeout -k 5 $(($4 + 20)) \
		iperf3 -c "$2" -p "$3" -t "$4" -f g --connect-timeout 2000 \
		>"$tmp/iperf.out" 2>&1 </dev/null &
	bg=$!
}

# iperf_wait waits for that run and sets g to the receiver's Gbit/s; fails
# (g empty) when the run did. Not for $(...): wait needs the parent shell.
iperf_wait() {
	local rc=0
	g=
	wait "$bg" || rc=$?
	bg=
	if [ "$rc" -ne 0 ]; then
		log "iperf3 failed ($rc): $(tail -n 1 "$tmp/iperf.out")"
		return 1
	fi
	g=$(awk '/receiver/ {for (i = 2; i <= NF; i++) if ($i == "Gbits/sec") print $(i - 1)}' "$tmp/iperf.out")
	[ -n "$g" ]
}

# reachable NS ADDR PORT: a 1 s run, retried for ~10 s while the server
# starts; it doubles as a warm-up.
reachable() {
	local i
	for ((i = 0; i < 10; i++)); do
		iperf_bg "$1" "$2" "$3" 1
		iperf_wait 2>/dev/null && return 0
		sleep 1
	done
	return 1
}

# proxy_conns PORT [NS]: established TCP connections docker-proxy holds on
# local port PORT right now (the ones it accepted from clients).
proxy_conns() {
	local -a pre=()
	[ -z "${2:-}" ] || pre=(ip netns exec "$2")
	"${pre[@]}" ss -Htnp state established "( sport = :$1 )" |
		awk '/"docker-proxy"/ {n++} END {print n + 0}'
}

# measure NS ADDR PORT DNS: one measured run of $secs from namespace NS;
# sets g (Gbit/s, empty on failure), dnat (connections the port's DNAT rule
# in namespace DNS matched during the run) and px (most docker-proxy
# connections on the port seen at once, sampled every 0.5 s while it ran).
measure() {
	local before n
	before=$(dnat_conns "$3" "$4")
	px=0
	iperf_bg "$1" "$2" "$3" "$secs"
	while kill -0 "$bg" 2>/dev/null; do
		n=$(proxy_conns "$3" "$4")
		[ "$n" -le "$px" ] || px=$n
		sleep 0.5
	done
	iperf_wait || true
	dnat=$(($(dnat_conns "$3" "$4") - before))
}

# diagnose_vx prints what explains an unreachable vxbridge port.
diagnose_vx() {
	local f
	log "vxbridge port $port0 not reachable at $host_ip; state follows"
	{
		echo "--- iptables -t nat -S"
		iptables -t nat -S
		echo "--- iptables -S VXBRIDGE-FORWARD"
		iptables -S VXBRIDGE-FORWARD
		for f in ${DOCKERD_LOG:-} /var/log/dockerd.log /var/log/dockerd-vxbridge.log; do
			[ -f "$f" ] || continue
			echo "--- grep plugin= $f | tail"
			grep plugin= "$f" | tail
		done
	} >&2
}

# dnat_conns PORT [NS]: connections the kernel DNAT rule for PORT matched
# (the nat table sees one packet per connection); shows which path carried
# the traffic.
dnat_conns() {
	local -a pre=()
	[ -z "${2:-}" ] || pre=(ip netns exec "$2")
	"${pre[@]}" iptables -t nat -L -n -v -x |
		awk -v p="dpt:$1" '/DNAT/ {for (i = 1; i <= NF; i++) if ($i == p) n += $1} END {print n + 0}'
}

# median: of the numbers on stdin (words that are not numbers, like
# "fail", are skipped); prints nothing when there are none.
median() {
	tr ' ' '\n' | awk '/^[0-9.]+$/' | sort -g |
		awk '{v[NR] = $1} END {if (NR == 0) exit; if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m}'
}

# ---- checks -----------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root"
[[ $secs =~ ^[1-9][0-9]*$ && $repeat =~ ^[1-9][0-9]*$ && $port0 =~ ^[1-9][0-9]*$ ]] ||
	die "BENCH_SECONDS, BENCH_REPEAT and BENCH_PORT must be positive integers"
for c in docker dockerd iperf3 ip iptables nsenter unshare setsid flock ldd tar ss timeout; do
	command -v "$c" >/dev/null || die "$c not found (see scripts/deps.sh)"
done
[ -x /bin/busybox ] || die "/bin/busybox missing: install busybox-static"
docker info >/dev/null 2>&1 || die "dockerd does not answer (run scripts/dockerd.sh)"
[ "$(docker plugin inspect -f '{{.Enabled}}' "$plugin" 2>/dev/null)" = true ] ||
	die "plugin $plugin not enabled (run make install)"

# One run at a time: the names are fixed. Locking the script itself leaves
# no lock file behind.
exec 9<"${BASH_SOURCE[0]}"
flock -n 9 || die "another bench-ports.sh run is in progress"

trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cleanup

ports=("$port0" "$((port0 + 1))" "$((port0 + 2))")
for p in "${ports[@]:0:2}"; do
	[ -z "$(ss -Htln "sport = :$p")" ] || die "host port $p is in use; set BENCH_PORT"
done
[ -z "$(ip -4 -o addr show to 198.51.100.0/24)" ] || die "198.51.100.0/24 is already on a host interface"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vxbench.XXXXXX")
build_image

# ---- the two "machines" and their links to the client ---------------------
ip netns add "$ns_cli"
ip netns add "$ns_d2"
ip -n "$ns_cli" link set lo up
ip -n "$ns_d2" link set lo up
veth_pair "" vxbench-h0 "$host_ip" vxbench-c0 "$cli_ip0"
veth_pair "$ns_d2" vxbench-h1 "$d2_ip" vxbench-c1 "$cli_ip1"

log "starting the second dockerd (--userland-proxy=false) in $ns_d2"
start_d2
docker save "$image" | d2 load >/dev/null

# ---- one iperf3 server per case ---------------------------------------------
log "starting servers"
docker network create -d "$plugin" vxbench-vx >/dev/null
docker run -d --name vxbench-vx --network vxbench-vx -p "${ports[0]}:5201" "$image" >/dev/null
docker network create -d bridge vxbench-br >/dev/null
docker run -d --name vxbench-br --network vxbench-br -p "${ports[1]}:5201" "$image" >/dev/null
d2 network create -d bridge vxbench-nb >/dev/null
d2 run -d --name vxbench-nb --network vxbench-nb -p "${ports[2]}:5201" "$image" >/dev/null

cases=(vxbridge bridge+proxy bridge-noproxy)
# Per case: the namespace its dockerd (and so its DNAT rules and any
# docker-proxy) lives in, "" for the host.
hostns=("" "" "$ns_d2")
# Per path p: 0 from another machine (the client namespace, at the case's
# veth address), 1 from the case's host at 127.0.0.1.
pathname=("from another machine" "from the host via 127.0.0.1")
# from_ns I P / to_addr I P: where the client runs and what it aims at.
from_ns() { if [ "$2" -eq 0 ]; then echo "$ns_cli"; else echo "${hostns[$1]}"; fi; }
to_addr() { if [ "$2" -eq 0 ]; then echo "${addrs[$1]}"; else echo 127.0.0.1; fi; }
addrs=("$host_ip" "$host_ip" "$d2_ip")
declare -A runs=() ok=() dnats=() pxruns=() nruns=()
for i in 0 1 2; do
	for p in 0 1; do
		if reachable "$(from_ns "$i" "$p")" "$(to_addr "$i" "$p")" "${ports[i]}"; then
			ok[$i,$p]=1
		else
			log "${cases[i]}: $(to_addr "$i" "$p"):${ports[i]} not reachable ${pathname[p]}"
			[ "$i$p" != 00 ] || diagnose_vx
		fi
	done
done
[ ${#ok[@]} -gt 0 ] || die "no case reachable"

# ---- measure: rounds interleave cases and paths so drift hits all alike -----
for ((r = 1; r <= repeat; r++)); do
	for i in 0 1 2; do
		for p in 0 1; do
			[ -n "${ok[$i,$p]:-}" ] || continue
			log "round $r/$repeat: ${cases[i]} ${pathname[p]} (${secs} s)"
			measure "$(from_ns "$i" "$p")" "$(to_addr "$i" "$p")" "${ports[i]}" "${hostns[i]}"
			runs[$i,$p]="${runs[$i,$p]:-} ${g:-fail}"
			dnats[$i,$p]=$((${dnats[$i,$p]:-0} + dnat))
			nruns[$i,$p]=$((${nruns[$i,$p]:-0} + 1))
			[ "$px" -eq 0 ] || pxruns[$i,$p]=$((${pxruns[$i,$p]:-0} + 1))
		done
	done
done

# Whether a docker-proxy listens on each host port at all.
listen=()
for i in 0 1 2; do
	if [ -n "${hostns[i]}" ]; then
		l=$(in_d2 ss -Htlnp "sport = :${ports[i]}")
	else
		l=$(ss -Htlnp "sport = :${ports[i]}")
	fi
	listen[i]=no
	[[ $l != *docker-proxy* ]] || listen[i]=yes
done

# ---- report -----------------------------------------------------------------
# cell I P: "median | runs" for the throughput table.
cell() {
	local m
	if [ -z "${ok[$1,$2]:-}" ]; then
		echo "unreachable | -"
		return
	fi
	m=$(median <<<"${runs[$1,$2]}")
	echo "${m:-failed} | $(xargs <<<"${runs[$1,$2]}")"
}
table=$(
	echo "| case | from another machine: median Gbit/s | runs | from the host via 127.0.0.1: median Gbit/s | runs |"
	echo "|---|---:|---|---:|---|"
	for i in 0 1 2; do
		echo "| ${cases[i]} | $(cell "$i" 0) | $(cell "$i" 1) |"
	done
)
paths=$(
	echo "| case | path | kernel DNAT rule matched | docker-proxy carried it |"
	echo "|---|---|---|---|"
	for i in 0 1 2; do
		for p in 0 1; do
			if [ -z "${ok[$i,$p]:-}" ]; then
				echo "| ${cases[i]} | ${pathname[p]} | - (unreachable) | - |"
				continue
			fi
			n=${nruns[$i,$p]} d=${dnats[$i,$p]} x=${pxruns[$i,$p]:-0}
			dm="no (+0 connections over $n runs)"
			[ "$d" -eq 0 ] || dm="yes (+$d connections over $n runs)"
			pm="no (0/$n runs)"
			[ "$x" -eq 0 ] || pm="yes ($x/$n runs)"
			echo "| ${cases[i]} | ${pathname[p]} | $dm | $pm |"
		done
	done
)
cmd="BENCH_SECONDS=$secs BENCH_REPEAT=$repeat${BENCH_PORT:+ BENCH_PORT=$BENCH_PORT} bash tests/bench-ports.sh"

echo "$table"
echo
echo "$paths"
{
	echo "# Published-port throughput"
	echo
	echo "iperf3 server in a container behind \`-p HOSTPORT:5201\`; iperf3 client (one TCP stream, ${secs} s,"
	echo "${repeat} runs per case and path, all interleaved) on two paths:"
	echo
	echo "- from another machine: the client is in a separate network namespace joined by a veth pair and"
	echo "  aims at the host-side veth address;"
	echo "- from the host via 127.0.0.1: the client is on the case's host and aims at \`127.0.0.1:HOSTPORT\`."
	echo
	echo "bridge-noproxy runs on a second dockerd (\`--userland-proxy=false\`) in its own network namespace, which"
	echo "is its host: reached from the client namespace over a second veth pair, and its 127.0.0.1 path runs"
	echo "inside that namespace."
	echo
	echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "- kernel: $(uname -r)"
	echo "- docker: $(docker version -f '{{.Server.Version}}')"
	echo "- CPUs: $(nproc)"
	echo "- iperf3: $(iperf3 --version | awk 'NR == 1 {print $2}')"
	echo "- reproduce (root, in the repo): \`$cmd\`"
	echo
	echo "$table"
	echo
	echo "Path check, per measured run: the port's kernel DNAT rule counters (nat table, one count per"
	echo "connection; an iperf3 run opens 2) before and after, and whether docker-proxy held established"
	echo "connections on the port while it ran (sampled every 0.5 s). docker-proxy listening on the port:"
	echo "vxbridge ${listen[0]}, bridge+proxy ${listen[1]}, bridge-noproxy ${listen[2]}."
	echo
	echo "$paths"
} >"$out"
log "written $out"
# A case or path that could not be measured makes the run fail, after the report.
for i in 0 1 2; do
	for p in 0 1; do
		if [ -z "${ok[$i,$p]:-}" ] || [ -z "$(median <<<"${runs[$i,$p]}")" ]; then
			exit 1
		fi
	done
done
