#!/usr/bin/env bash
# dockerd.sh: make sure a Docker daemon answers; start one if not.
# Uses systemd where it runs as PID 1; elsewhere (containers, CI VMs) starts
# dockerd in the background itself, logging to $DOCKERD_LOG.
set -euo pipefail

log=${DOCKERD_LOG:-/var/log/dockerd-vxbridge.log}
wait_s=60

if docker info >/dev/null 2>&1; then
	echo "dockerd.sh: dockerd already running"
	exit 0
fi

# Only the local default dockerd is ours to start; another one (a lab host's)
# is started by whatever made it.
if [ -n "${DOCKER_HOST:-}" ]; then
	echo "dockerd.sh: dockerd at DOCKER_HOST=$DOCKER_HOST does not answer" >&2
	exit 1
fi

command -v dockerd >/dev/null 2>&1 || { echo "dockerd.sh: dockerd not installed (run scripts/deps.sh)" >&2; exit 1; }
command -v docker >/dev/null 2>&1 || { echo "dockerd.sh: docker CLI not installed (run scripts/deps.sh)" >&2; exit 1; }

if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -d /run/systemd/system ]; then
	echo "dockerd.sh: starting docker via systemd"
	systemctl start docker
else
	# dockerd refuses to start without cgroups; without systemd nobody may have mounted them.
	if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && ! mountpoint -q /sys/fs/cgroup/devices 2>/dev/null; then
		if command -v cgroupfs-mount >/dev/null 2>&1; then
			echo "dockerd.sh: mounting cgroups (cgroupfs-mount)"
			cgroupfs-mount
		fi
	fi
	# A dockerd that was killed leaves its pid file; if that pid now belongs to
	# another process, dockerd would refuse to start.
	pidfile=/var/run/docker.pid
	if [ -f "$pidfile" ]; then
		pid=$(cat "$pidfile" 2>/dev/null || true)
		if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]; then
			rm -f "$pidfile"
		fi
	fi
	echo "dockerd.sh: starting dockerd (log: $log)"
	mkdir -p "$(dirname "$log")"
	# setsid + all fds redirected, every other inherited one closed: dockerd
	# outlives this script and holds nothing of the caller's open (a pipe of
	# make or CI, a lock file held by flock).
	(
		for fd in /proc/self/fd/*; do
			fd=${fd##*/}
			[ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
		done
		exec setsid dockerd >>"$log" 2>&1 </dev/null
	) &
fi

for ((i = 0; i < wait_s * 2; i++)); do
	if docker info >/dev/null 2>&1; then
		echo "dockerd.sh: dockerd is up ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
		exit 0
	fi
	sleep 0.5
done

echo "dockerd.sh: dockerd did not answer within ${wait_s}s" >&2
if [ -f "$log" ]; then
	echo "--- last lines of $log ---" >&2
	tail -n 40 "$log" >&2
else
	echo "(see: journalctl -u docker)" >&2
fi
exit 1
