#!/usr/bin/env bash
# install-plugin.sh [BINARY]: (re)install vxbridge as the Docker managed plugin
# vxbridge:latest from BINARY (default bin/vxbridge), and wait until it serves.
# Re-running replaces the installed plugin; the state in /var/lib/vxbridge stays.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plugin=${VXBRIDGE_PLUGIN:-vxbridge:latest}
binary=${1:-$repo/bin/vxbridge}
bundle=$repo/build/plugin
state_dir=/var/lib/vxbridge
wait_s=30

die() { echo "install-plugin.sh: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "dockerd does not answer (run scripts/dockerd.sh)"

# config.json bind-mounts this folder: enable fails while it is missing.
mkdir -p "$state_dir"

bash "$repo/scripts/rootfs.sh" "$bundle" "$binary"

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
sock=/run/docker/plugins/$id/vxbridge.sock

# plugin_log: the plugin's stdout/stderr, which dockerd writes to its own log.
plugin_log() {
	local dlog
	dlog=$(readlink "/proc/$(cat /var/run/docker.pid 2>/dev/null)/fd/2" 2>/dev/null || true)
	if [ -f "$dlog" ]; then
		echo "--- last lines of plugin $id in $dlog ---" >&2
		grep -F -- "plugin=$id" "$dlog" | tail -n 30 >&2 || true
	else
		echo "(the plugin's output is in dockerd's log)" >&2
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
	die "$sock did not appear within ${wait_s}s"
fi

echo "install-plugin.sh: $plugin enabled, socket $sock"
docker plugin ls
