#!/usr/bin/env bash
# lab.sh up|down|status|env: three Docker hosts on this one machine, for trying
# and testing vxbridge across hosts.
#
#   up      bring the lab up, or finish bringing it up (idempotent); returns
#           once every dockerd answers, Consul has a leader and 3 alive
#           members, and every host's plugin is enabled
#   down    remove all of it: containers, daemons, agents, shims, every
#           process in the lab's namespaces, the namespaces, links, mounts,
#           cgroups and files (the logs stay in $VXLAB_ROOT/logs)
#   status  show what runs
#   env     print eval-able variables: DOCKER_HOST_A/B/C, NETNS_*, UNDERLAY_IP_*,
#           CONSUL_HTTP_ADDR_* (reachable inside the lab namespaces only)
#
# Host h in a b c is:
#   network namespace vxlab-h, link eth0 with 192.168.77.1x/24 (a=.11 b=.12 c=.13),
#     plugged into the bridge br0 of the namespace vxlab-sw (the "switch")
#   a dockerd (and the containerd it starts), in that namespace plus a private
#     mount and UTS namespace (hostname vxlab-h) where /etc/docker, /run/docker
#     and /run/containerd are bind mounts of folders under $VXLAB_ROOT/h: its
#     own plugin sockets, daemon.json, container netns files and shim sockets.
#     `ip netns exec` is not used for it: it remounts /sys and hides cgroups.
#     API: unix://$VXLAB_ROOT/h/docker.sock, cgroup parent vxlab-h.
#   a Consul server (agent -server -bootstrap-expect 3), HTTP API on the host's
#     127.0.0.1:8500 and underlay address, data in $VXLAB_ROOT/h/consul
#   host c only: dockerd with the one-time per-host setting for cross-host
#     names, `--dns 169.254.53.53 --dns <first nameserver of /etc/resolv.conf>`
#     (the plugin's resolver, then the real upstream; see README, names), so
#     the lab exercises both that and the zero-flag path of hosts a and b
#   the test image vxbridge-test/busybox:latest (scripts/test-image.sh)
#   the managed plugin vxbridge:latest (scripts/install-plugin.sh) with state in
#     $VXLAB_ROOT/h/state and that host's docker socket; if config.json declares
#     CONSUL_HTTP_ADDR, it is pointed at the host's own agent; its Prometheus
#     metrics are at http://127.0.0.1:9323/metrics inside the host's namespace.
# The main dockerd is neither needed nor touched.
#
# Settings (environment):
#   VXLAB_ROOT             lab folder (default /tmp/vxlab)
#   VXLAB_BINARY           plugin binary (default bin/vxbridge; `make lab` builds it)
#   VXLAB_PLUGIN_SETTINGS  extra KEY=VALUE plugin settings for every host
#   VXLAB_DOCKERD_FLAGS    extra dockerd flags for every host
#   VXLAB_CONSUL_FLAGS     extra consul agent flags for every host
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=${VXLAB_ROOT:-/tmp/vxlab}
binary=${VXLAB_BINARY:-$repo/bin/vxbridge}
plugin=${VXBRIDGE_PLUGIN:-vxbridge:latest}
hosts=(a b c)
declare -A uip=([a]=192.168.77.11 [b]=192.168.77.12 [c]=192.168.77.13)
switch=vxlab-sw
wait_s=120
metrics_port=9323

log() { echo "lab.sh: $*" >&2; }
die() { log "$*"; exit 1; }
upper() { echo "${1^^}"; }

netns() { echo "vxlab-$1"; }
hdir() { echo "$root/$1"; }
dk() { local h=$1; shift; docker -H "unix://$(hdir "$h")/docker.sock" "$@"; }
# pid_of FILE: the pid in FILE if that process lives.
pid_of() {
	local p
	p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo "$p"
}
dockerd_up() { pid_of "$(hdir "$1")/docker.pid" >/dev/null && dk "$1" version >/dev/null 2>&1; }
in_ns() { local h=$1; shift; nsenter --net="/run/netns/$(netns "$h")" -- "$@"; }
consul_cli() { local h=$1; shift; CHECKPOINT_DISABLE=1 in_ns "$h" "$consul" "$@" -http-addr=http://127.0.0.1:8500; }

# elapsed T0: milliseconds since T0 (from date +%s%N).
elapsed() { echo $((($(date +%s%N) - $1) / 1000000)); }

underlay_up() {
	local h ns
	[ -e "/run/netns/$switch" ] || ip netns add "$switch"
	ip -n "$switch" link show br0 >/dev/null 2>&1 || ip -n "$switch" link add br0 type bridge
	ip -n "$switch" link set lo up
	ip -n "$switch" link set br0 up
	for h in "${hosts[@]}"; do
		ns=$(netns "$h")
		[ -e "/run/netns/$ns" ] || ip netns add "$ns"
		ip -n "$ns" link set lo up
		if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
			ip -n "$switch" link del "port-$h" 2>/dev/null || true
			ip -n "$switch" link add "port-$h" type veth peer name eth0 netns "$ns"
		fi
		ip -n "$switch" link set "port-$h" master br0 up
		ip -n "$ns" addr replace "${uip[$h]}/24" dev eth0
		ip -n "$ns" link set eth0 up
	done
}

# host_flags H: the dockerd flags of host H alone.
host_flags() {
	[ "$1" = c ] || return 0
	echo "--dns 169.254.53.53 --dns $(awk '$1 == "nameserver" {print $2; exit}' /etc/resolv.conf)"
}

start_dockerd() {
	local h=$1 d ns
	d=$(hdir "$h") ns=$(netns "$h")
	dockerd_up "$h" && return 0
	mkdir -p "$d/etc-docker" "$d/run-docker" "$d/run-containerd" "$d/data" "$d/exec" "$root/logs"
	rm -f "$d/docker.sock"
	# Bind targets must exist on the real file system (empty folders where
	# no main dockerd or containerd ever ran).
	mkdir -p /etc/docker /run/docker /run/containerd
	# --propagation slave: the host's mounts reach the lab host, none of the
	# lab host's (container netns files, overlays) reach the host.
	# shellcheck disable=SC2046,SC2086,SC2016 # the extra flags are a list; $0.. are sh's
	setsid nsenter --net="/run/netns/$ns" -- \
		unshare --mount --uts --propagation slave -- /bin/sh -c '
			set -e
			hostname "$0"
			d=$1
			shift
			mount --bind "$d/etc-docker" /etc/docker
			mount --bind "$d/run-docker" /run/docker
			mount --bind "$d/run-containerd" /run/containerd
			exec dockerd --data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/docker.pid" \
				-H "unix://$d/docker.sock" --cgroup-parent "$0" "$@"' \
		"$ns" "$d" $(host_flags "$h") ${VXLAB_DOCKERD_FLAGS:-} \
		>>"$root/logs/dockerd-$h.log" 2>&1 </dev/null &
}

start_consul() {
	local h=$1 d o joins=()
	d=$(hdir "$h")
	pid_of "$d/consul.pid" >/dev/null && return 0
	for o in "${hosts[@]}"; do
		[ "$o" = "$h" ] || joins+=(-retry-join "${uip[$o]}")
	done
	mkdir -p "$d/consul" "$root/logs"
	# CHECKPOINT_DISABLE: no update check over the internet. Three agents on
	# one machine: the node id must not come from the machine. Raft timing
	# as Consul recommends for production (multiplier 1: a new leader in
	# seconds; the default 5 is for tiny machines).
	# shellcheck disable=SC2086 # the extra flags are a list
	CHECKPOINT_DISABLE=1 setsid nsenter --net="/run/netns/$(netns "$h")" -- \
		"$consul" agent -server -bootstrap-expect 3 "${joins[@]}" \
		-node "$(netns "$h")" -disable-host-node-id -bind "${uip[$h]}" \
		-client "127.0.0.1 ${uip[$h]}" -data-dir "$d/consul" -pid-file "$d/consul.pid" \
		-hcl 'performance { raft_multiplier = 1 }' \
		${VXLAB_CONSUL_FLAGS:-} \
		>>"$root/logs/consul-$h.log" 2>&1 </dev/null &
}

# wait_for WHAT CMD...: run CMD every 0.5 s until it succeeds, at most wait_s.
wait_for() {
	local what=$1 i
	shift
	for ((i = 0; i < wait_s * 2; i++)); do
		"$@" && return 0
		sleep 0.5
	done
	log "timed out after ${wait_s}s waiting for $what"
	return 1
}

# consul_ready H: the agent on H sees a leader and 3 alive members.
consul_ready() {
	local leader alive
	leader=$(consul_cli "$1" info 2>/dev/null | awk -F' = ' '$1 ~ /leader_addr/ {print $2}')
	alive=$(consul_cli "$1" members -status=alive 2>/dev/null | tail -n +2 | wc -l)
	[ -n "$leader" ] && [ "$alive" -eq 3 ]
}

plugin_enabled() { [ "$(dk "$1" plugin inspect -f '{{.Enabled}}' "$plugin" 2>/dev/null)" = true ]; }

# install_plugin H: install-plugin.sh on host H from the lab's bundle, with
# the host's own state folder and docker socket.
install_plugin() {
	local h=$1 d settings=()
	d=$(hdir "$h")
	# The plugin runs in the host's network namespace: 127.0.0.1 is its agent.
	if grep -q '"name": *"CONSUL_HTTP_ADDR"' "$root/bundle/config.json"; then
		settings+=(CONSUL_HTTP_ADDR=http://127.0.0.1:8500)
	fi
	# Metrics on the host's own loopback (each lab host has its own).
	if grep -q '"name": *"VXBRIDGE_METRICS_ADDR"' "$root/bundle/config.json"; then
		settings+=(VXBRIDGE_METRICS_ADDR=127.0.0.1:$metrics_port)
	fi
	# shellcheck disable=SC2206 # a list of KEY=VALUE words
	settings+=(${VXLAB_PLUGIN_SETTINGS:-})
	DOCKER_HOST="unix://$d/docker.sock" bash "$repo/scripts/install-plugin.sh" \
		--state-dir "$d/state" --docker-socket "$d/docker.sock" --bundle "$root/bundle" "${settings[@]}"
}

# on_hosts WHAT FUNC H...: FUNC H on the given hosts at once, each logging to
# $root/logs/WHAT-H.log; fails (showing the logs) if any fails.
on_hosts() {
	local what=$1 fn=$2 h failed=
	shift 2
	declare -A pids=()
	for h in "$@"; do
		"$fn" "$h" >"$root/logs/$what-$h.log" 2>&1 &
		pids[$h]=$!
	done
	for h in "$@"; do
		if ! wait "${pids[$h]}"; then
			cat "$root/logs/$what-$h.log" >&2
			failed+=" $h"
		fi
	done
	[ -z "$failed" ] || die "$what failed on host(s)$failed"
}

test_image() { DOCKER_HOST="unix://$(hdir "$1")/docker.sock" bash "$repo/scripts/test-image.sh"; }

cmd_up() {
	local t0 h need=()
	t0=$(date +%s%N)
	[ "$(id -u)" -eq 0 ] || die "must run as root"
	[ -x "$binary" ] || die "plugin binary $binary missing (run make build)"
	consul=$(bash "$repo/scripts/consul.sh")
	mkdir -p "$root/logs"
	underlay_up
	for h in "${hosts[@]}"; do
		start_dockerd "$h"
		start_consul "$h"
	done
	for h in "${hosts[@]}"; do
		wait_for "dockerd on host $h (log: $root/logs/dockerd-$h.log)" dockerd_up "$h" ||
			{ tail -n 20 "$root/logs/dockerd-$h.log" >&2; exit 1; }
	done
	log "dockerds up after $(elapsed "$t0") ms"
	on_hosts image test_image "${hosts[@]}"
	log "test image in every dockerd after $(elapsed "$t0") ms"
	for h in "${hosts[@]}"; do
		plugin_enabled "$h" || need+=("$h")
	done
	# One bundle for every host; laid out while Consul elects its leader.
	if [ ${#need[@]} -gt 0 ]; then
		bash "$repo/scripts/rootfs.sh" "$root/bundle" "$binary" >"$root/logs/rootfs.log" 2>&1 ||
			{ cat "$root/logs/rootfs.log" >&2; die "plugin bundle failed"; }
	fi
	# Before the plugins: a plugin pointed at Consul finds it serving.
	for h in "${hosts[@]}"; do
		wait_for "Consul on host $h to see a leader and 3 alive members (log: $root/logs/consul-$h.log)" \
			consul_ready "$h" || { tail -n 20 "$root/logs/consul-$h.log" >&2; exit 1; }
	done
	log "Consul has a leader and 3 alive members after $(elapsed "$t0") ms"
	[ ${#need[@]} -eq 0 ] || on_hosts install install_plugin "${need[@]}"
	log "$plugin enabled on every host; lab up in $(elapsed "$t0") ms"
	cmd_env
}

# kill_wait PID...: TERM, wait up to 20 s, then KILL whatever is left.
kill_wait() {
	local p i left
	[ $# -eq 0 ] && return 0
	kill -TERM "$@" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		left=
		for p in "$@"; do kill -0 "$p" 2>/dev/null && left=1 && break; done
		[ -z "$left" ] && return 0
		sleep 0.2
	done
	log "killing (KILL) what did not stop: $*"
	kill -KILL "$@" 2>/dev/null || true
	sleep 0.2
}

# lab_pids: the processes of the lab: everything in its namespaces, and any
# daemon whose command line names a lab host's folder (a shim or runc that
# left the namespace). Other programs that merely name the folder (a shell,
# a `watch docker -H ...`) are not the lab's.
lab_pids() {
	local h ns p
	for h in "${hosts[@]}"; do
		for p in $(grep -lasF -- "$(hdir "$h")/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
			case $(cat "/proc/$p/comm" 2>/dev/null) in
			dockerd | containerd* | runc | docker-proxy | consul*) echo "$p" ;;
			esac
		done
	done
	for ns in "${hosts[@]/#/vxlab-}" "$switch"; do
		[ ! -e "/run/netns/$ns" ] || ip netns pids "$ns" 2>/dev/null || true
	done
}

cmd_down() {
	local t0 h pids ids d ns leftover plugin_ids
	t0=$(date +%s%N)
	[ "$(id -u)" -eq 0 ] || die "must run as root"
	# Containers first, so dockerd stops quickly and nothing restarts them.
	# Plugins' cgroups are /<plugin id>, outside the --cgroup-parent: note them.
	plugin_ids=
	for h in "${hosts[@]}"; do
		if dockerd_up "$h"; then
			plugin_ids+=" $(dk "$h" plugin ls -q --no-trunc | tr '\n' ' ')"
			ids=$(dk "$h" ps -aq)
			# shellcheck disable=SC2086 # a list of ids
			[ -z "$ids" ] || dk "$h" rm -f $ids >/dev/null || true
		fi
	done
	# dockerd stops its plugin and its containerd on TERM.
	pids=$(for h in "${hosts[@]}"; do
		d=$(hdir "$h")
		pid_of "$d/docker.pid" || true
		pid_of "$d/consul.pid" || true
	done)
	# shellcheck disable=SC2086 # a list of pids
	kill_wait $pids
	pids=$(lab_pids | sort -u)
	if [ -n "$pids" ]; then
		log "stopping what is left in the lab: $(tr '\n' ' ' <<<"$pids")"
		# shellcheck disable=SC2086 # a list of pids
		kill_wait $pids
	fi
	for ns in "${hosts[@]/#/vxlab-}" "$switch"; do
		[ -e "/run/netns/$ns" ] && ip netns del "$ns"
	done
	# Cgroups the lab's dockerds made (--cgroup-parent vxlab-h, and the
	# plugins'), deepest first; runc removes those of what it stopped itself.
	for d in $(netns a) $(netns b) $(netns c) $plugin_ids; do
		find /sys/fs/cgroup -maxdepth 2 -type d -name "$d" 2>/dev/null |
			while read -r d; do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
	done
	leftover=$(for d in $(netns a) $(netns b) $(netns c) $plugin_ids; do
		find /sys/fs/cgroup -maxdepth 2 -type d -name "$d"
	done)
	[ -z "$leftover" ] || die "cgroups left (still in use?): $leftover"
	# Mounts die with the lab's mount namespaces; never delete through one.
	leftover=$(awk -v r="$root/" 'index($2, r) == 1' /proc/mounts)
	[ -z "$leftover" ] || die "mounts left under $root, files kept: $leftover"
	find "$root" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
	log "lab down in $(elapsed "$t0") ms (logs kept in $root/logs)"
}

cmd_env() {
	local h H
	echo "export VXLAB_ROOT=$root"
	for h in "${hosts[@]}"; do
		H=$(upper "$h")
		echo "export DOCKER_HOST_$H=unix://$(hdir "$h")/docker.sock NETNS_$H=$(netns "$h")" \
			"UNDERLAY_IP_$H=${uip[$h]} CONSUL_HTTP_ADDR_$H=http://${uip[$h]}:8500" \
			"METRICS_URL_$H=http://127.0.0.1:$metrics_port/metrics"
	done
}

cmd_status() {
	local h d p ns
	for h in "${hosts[@]}"; do
		d=$(hdir "$h") ns=$(netns "$h")
		printf '%s: netns %s' "$h" "$([ -e "/run/netns/$ns" ] && echo "$ns" || echo absent)"
		if dockerd_up "$h"; then
			printf ', dockerd %s (%s containers), plugin %s' "$(pid_of "$d/docker.pid")" \
				"$(dk "$h" ps -q | wc -l)" "$(dk "$h" plugin inspect -f '{{if .Enabled}}enabled{{else}}disabled{{end}}' "$plugin" 2>/dev/null || echo absent)"
		else
			printf ', dockerd down'
		fi
		if p=$(pid_of "$d/consul.pid"); then
			consul=${consul:-$(bash "$repo/scripts/consul.sh")}
			printf ', consul %s (leader %s, %s alive)' "$p" \
				"$(consul_cli "$h" info 2>/dev/null | awk -F' = ' '$1 ~ /leader_addr/ {print $2}')" \
				"$(consul_cli "$h" members -status=alive 2>/dev/null | tail -n +2 | wc -l)"
		else
			printf ', consul down'
		fi
		echo
	done
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
*)
	echo "usage: $0 up|down|status|env" >&2
	exit 2
	;;
esac
