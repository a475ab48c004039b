#!/usr/bin/env bash
# deps.sh: install the Debian packages vxbridge's build, plugin install and tests
# need, but only those missing (apt-get update runs once, and only then).
set -euo pipefail

# docker.io: dockerd + containerd + runc. iptables: dockerd needs it, and
# rootfs.sh copies it into the plugin. iproute2: tests inspect links and netns.
# busybox-static: the test image. iperf3: throughput tests. cgroupfs-mount:
# mounts cgroups where no systemd does (scripts/dockerd.sh). libc-bin (ldd) and
# coreutils (chroot) are used by rootfs.sh; tar by test-image.sh.
pkgs=(iptables iproute2 busybox-static iperf3 cgroupfs-mount libc-bin coreutils tar)

installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
# Any dockerd will do (docker-ce included): only install docker.io when none is there.
if ! command -v dockerd >/dev/null 2>&1; then
	missing+=(docker.io)
fi
for p in "${pkgs[@]}"; do
	installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "deps.sh: all packages present"
	exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "deps.sh: need root to install: ${missing[*]}" >&2; exit 1; }
echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold)
apt-get "${apt_opts[@]}" update
apt-get "${apt_opts[@]}" install "${missing[@]}"
