#!/usr/bin/env bash
# consul.sh: print the path of a Consul agent binary, building it once if needed.
# Uses `consul` from PATH when there is one; otherwise builds the last
# MPL-licensed agent (v1.14.11) from its Go module and caches it in
# $VXBRIDGE_CACHE (default /var/cache/vxbridge). The module's go.mod has
# `replace` lines pointing at its own subfolders, which `go install` refuses:
# build from a writable copy without them (the subfolders' own versions come
# from the module proxy instead). Takes a few minutes on 2 cores, once.
set -euo pipefail
export PATH=/usr/local/go/bin:$PATH

version=v1.14.11
cache=${VXBRIDGE_CACHE:-/var/cache/vxbridge}
bin=$cache/consul-$version

if command -v consul >/dev/null 2>&1; then
	command -v consul
	exit 0
fi
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
# One build at a time: a second caller (another make target, another worker)
# waits for the first one's binary instead of building it again.
exec 9>"$cache/consul-$version.lock"
if ! flock -n 9; then
	echo "consul.sh: another consul.sh is building consul $version; waiting" >&2
	flock 9
fi
# building: a go build runs in a build.* folder (a consul.sh that predates
# the lock does not take it).
building() {
	local p
	for p in /proc/[0-9]*; do
		case $(readlink "$p/cwd" 2>/dev/null) in "$cache"/build.*) return 0 ;; esac
	done
	return 1
}
while [ ! -x "$bin" ] && building; do
	sleep 2
done
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi
# Folders of builds that were killed.
chmod -R u+w "$cache"/build.* 2>/dev/null || true
rm -rf "$cache"/build.*

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

echo "consul.sh: building consul $version (once; cached in $cache)" >&2
dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "github.com/hashicorp/consul@$version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "consul.sh: module download failed" >&2; exit 1; }
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
sed -i '/^replace github.com\/hashicorp\/consul\//d' "$work/src/go.mod"
(cd "$work/src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" . >&2)
mv "$bin.tmp" "$bin"
echo "$bin"
