#!/usr/bin/env bash
# install-plugin.sh [--state-dir DIR] [--docker-socket PATH] [--bundle DIR] [BINARY] [KEY=VALUE...]
#
# (Re)install vxbridge as the Docker managed plugin vxbridge:latest from BINARY
# (default bin/vxbridge), configure it, enable it and wait until it serves.
# Re-running replaces the installed plugin; the state folder stays.
#
# It talks to the dockerd the docker CLI talks to: DOCKER_HOST, else the
# default socket. Every setting is applied with `docker plugin set` BEFORE the
# first enable, so the plugin never starts on the wrong folder or dockerd:
#   --state-dir DIR        host folder for the state DB (the `state` mount's
#                          source; default /var/lib/vxbridge, created if missing)
#   --docker-socket PATH   the dockerd API socket the plugin reads (the `docker`
#                          mount's source). Default: DOCKER_HOST's socket when
#                          that is a unix socket, else /run/docker.sock.
#   KEY=VALUE              any setting config.json declares settable (an env
#                          name, or MOUNT.source), passed to `docker plugin set`.
#   --bundle DIR           install the bundle rootfs.sh already laid out in DIR
#                          instead of building one from BINARY (one build for
#                          several dockerds, as scripts/lab.sh does).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plugin=${VXBRIDGE_PLUGIN:-vxbridge:latest}
bundle=
wait_s=30

die() { echo "install-plugin.sh: $*" >&2; exit 1; }

state_dir=/var/lib/vxbridge
docker_socket=
binary=
settings=()
while [ $# -gt 0 ]; do
	case "$1" in
	--state-dir) [ $# -ge 2 ] || die "--state-dir needs a folder"; state_dir=$2; shift 2 ;;
	--docker-socket) [ $# -ge 2 ] || die "--docker-socket needs a path"; docker_socket=$2; shift 2 ;;
	--bundle) [ $# -ge 2 ] || die "--bundle needs a folder"; bundle=$2; shift 2 ;;
	-*) die "unknown option $1" ;;
	*=*) settings+=("$1"); shift ;;
	*) [ -z "$binary" ] || die "two binaries given: $binary and $1"; binary=$1; shift ;;
	esac
done
[ -z "$bundle" ] || [ -z "$binary" ] || die "give a BINARY or a --bundle, not both"
binary=${binary:-$repo/bin/vxbridge}

target=${DOCKER_HOST:-the default docker socket}
docker info >/dev/null 2>&1 || die "dockerd at $target does not answer (run scripts/dockerd.sh, or check DOCKER_HOST)"

# The plugin must read the dockerd it is installed in: a lab dockerd's plugin
# pointed at the main dockerd would reconcile against the wrong networks.
if [ -z "$docker_socket" ] && [[ ${DOCKER_HOST:-} == unix://* ]]; then
	docker_socket=${DOCKER_HOST#unix://}
fi
# Mount sources must be absolute: dockerd resolves them on its own host.
[[ $state_dir == /* ]] || die "--state-dir $state_dir is not an absolute path"
[ "$state_dir" = /var/lib/vxbridge ] || settings=("state.source=$state_dir" "${settings[@]}")
if [ -n "$docker_socket" ]; then
	[[ $docker_socket == /* ]] || die "--docker-socket $docker_socket is not an absolute path"
	[ -S "$docker_socket" ] || die "--docker-socket $docker_socket is not a socket"
	settings=("docker.source=$docker_socket" "${settings[@]}")
fi
if [ -n "$bundle" ]; then
	if [ ! -f "$bundle/config.json" ] || [ ! -x "$bundle/rootfs/vxbridge" ]; then
		die "--bundle $bundle is not a plugin bundle (see scripts/rootfs.sh)"
	fi
else
	bundle=$repo/build/plugin
	bash "$repo/scripts/rootfs.sh" "$bundle" "$binary"
fi

# Check every key before the installed plugin is removed, so a typo leaves it
# in place. config.json names each env entry and mount with "name".
for kv in "${settings[@]}"; do
	key=${kv%%=*}
	[[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*(\.source)?$ ]] || die "setting $kv: want NAME=VALUE or MOUNT.source=PATH"
	grep -q "\"name\": *\"${key%.source}\"" "$bundle/config.json" ||
		die "setting $kv: config.json declares no setting named ${key%.source}"
done

# config.json bind-mounts this folder: enable fails while it is missing.
mkdir -p "$state_dir"

if docker plugin inspect "$plugin" >/dev/null 2>&1; then
	echo "install-plugin.sh: removing the installed $plugin"
	# -f: disable even while networks still use the driver (they keep working
	# once the new plugin is enabled under the same name).
	docker plugin disable -f "$plugin" >/dev/null 2>&1 || true
	docker plugin rm -f "$plugin" >/dev/null
fi

docker plugin create "$plugin" "$bundle" >/dev/null
# A new plugin gets a new id, so a socket left by an old one cannot fool us.
id=$(docker plugin inspect -f '{{.Id}}' "$plugin")

if [ ${#settings[@]} -gt 0 ]; then
	if ! docker plugin set "$plugin" "${settings[@]}"; then
		docker plugin rm -f "$plugin" >/dev/null 2>&1 || true
		die "docker plugin set $plugin ${settings[*]} failed; $plugin is not installed"
	fi
	echo "install-plugin.sh: set ${settings[*]}"
fi

# dockerd_pid: the dockerd that listens on the CLI's unix socket, found by the
# socket's inode in each dockerd's own socket table, so that one in another
# network namespace (a lab host) is found too. Prints nothing if none.
dockerd_pid() {
	local sock=${DOCKER_HOST:-unix:///var/run/docker.sock} pid inode path
	[[ $sock == unix://* ]] || return 0
	sock=$(readlink -f "${sock#unix://}")
	for pid in $(pgrep -x dockerd); do
		while read -r inode path; do
			[ "$(readlink -f "$path")" = "$sock" ] || continue
			if find "/proc/$pid/fd" -lname "socket:\[$inode\]" 2>/dev/null | grep -q .; then
				echo "$pid"
				return 0
			fi
		done < <(awk 'NR > 1 && $8 != "" {print $7, $8}' "/proc/$pid/net/unix" 2>/dev/null)
	done
}
dpid=$(dockerd_pid)
# The socket is under dockerd's /run/docker/plugins/<id>/ as dockerd sees it:
# through /proc/<pid>/root that also holds for a dockerd in its own mount
# namespace (a lab host's /run/docker is a bind mount only it sees).
seen=/run/docker/plugins/$id/vxbridge.sock
sock=${dpid:+/proc/$dpid/root}$seen

# plugin_log: the plugin's stdout/stderr, which dockerd writes to its own log.
plugin_log() {
	local dlog=
	[ -n "$dpid" ] && dlog=$(readlink "/proc/$dpid/fd/2" 2>/dev/null || true)
	if [ -f "$dlog" ]; then
		echo "--- last lines of plugin $id in $dlog ---" >&2
		grep -F -- "plugin=$id" "$dlog" | tail -n 30 >&2 || true
	else
		echo "(the plugin's output is in the log of dockerd at $target)" >&2
	fi
}

if ! docker plugin enable "$plugin" >/dev/null; then
	plugin_log
	die "docker plugin enable $plugin failed"
fi
for ((i = 0; i < wait_s * 10; i++)); do
	[ -S "$sock" ] && break
	sleep 0.1
done
if [ ! -S "$sock" ]; then
	plugin_log
	die "$seen (as dockerd sees it) did not appear within ${wait_s}s"
fi

echo "install-plugin.sh: $plugin enabled, socket $seen (as dockerd sees it)"
docker plugin ls
