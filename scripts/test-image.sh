#!/usr/bin/env bash
# test-image.sh: build the e2e tests' image vxbridge-test/busybox:latest from
# Debian's busybox-static, without any registry. Does nothing if it exists.
# It imports into the dockerd the docker CLI talks to: set DOCKER_HOST to build
# it in another one (scripts/lab.sh does, for each lab host).
set -euo pipefail

image=${TEST_IMAGE:-vxbridge-test/busybox:latest}
busybox=/bin/busybox

die() { echo "test-image.sh: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "dockerd at ${DOCKER_HOST:-the default socket} does not answer (run scripts/dockerd.sh)"
if docker image inspect "$image" >/dev/null 2>&1; then
	echo "test-image.sh: $image present"
	exit 0
fi
[ -x "$busybox" ] || die "$busybox missing (run scripts/deps.sh: busybox-static)"
# The image has no libc: the dynamic busybox package would not run in it.
if ldd "$busybox" >/dev/null 2>&1; then
	die "$busybox is dynamically linked; install busybox-static"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/var/www" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
# Minimal users so that id, httpd and nc run as expected.
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

tar -C "$root" --numeric-owner -c . |
	docker import \
		--change 'CMD ["/bin/sh"]' \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		- "$image" >/dev/null
echo "test-image.sh: built $image"
