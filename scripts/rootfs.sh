#!/usr/bin/env bash
# rootfs.sh OUT_DIR BINARY
#
# Lays out a Docker managed-plugin bundle for vxbridge:
#   OUT_DIR/config.json   copy of the repo's config.json (the plugin manifest)
#   OUT_DIR/rootfs/       /vxbridge (static binary) + an iptables for the host's backend
#
# go-iptables execs `iptables`, so the plugin needs one that programs the same
# backend (nf_tables or legacy) as the host's Docker rules. We copy the host's
# xtables-*-multi, its libraries and its run-time match/target modules; no base
# image or registry is needed. Rebuilding is idempotent: OUT_DIR/rootfs is
# recreated from scratch on every run.
set -euo pipefail

die() { echo "rootfs.sh: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 OUT_DIR BINARY"
out=$1
binary=$2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

[ -f "$binary" ] || die "binary $binary not found (run 'make build')"
[ -f "$repo/config.json" ] || die "$repo/config.json not found"
# The rootfs has no libc for vxbridge itself: insist on a static binary.
if ldd "$binary" >/dev/null 2>&1; then
	die "$binary is dynamically linked; build it with CGO_ENABLED=0"
fi

ipt_link=$(command -v iptables) || die "iptables not installed (run scripts/deps.sh)"
multi=$(readlink -f "$ipt_link")
case "$(basename "$multi")" in
xtables-nft-multi | xtables-legacy-multi) ;;
*) die "$ipt_link resolves to $multi, expected xtables-nft-multi or xtables-legacy-multi" ;;
esac
xtlibdir=/usr/lib/x86_64-linux-gnu/xtables
[ -d "$xtlibdir" ] || die "$xtlibdir not found (iptables modules)"

root=$out/rootfs
rm -rf "$root"
mkdir -p "$root"

# Mirror the host's merged-/usr links (/lib -> usr/lib, ...) so every path that
# ldd prints resolves the same way inside the rootfs.
for d in bin sbin lib lib64; do
	if [ -L "/$d" ]; then
		target=$(readlink "/$d")
		mkdir -p "$root/$(dirname "$d")/$target"
		ln -s "$target" "$root/$d"
	fi
done

# copy_file SRC: copy SRC (following links) to the same path inside the rootfs.
copy_file() {
	local dst=$root$1
	mkdir -p "$(dirname "$dst")"
	cp -L "$1" "$dst"
}

# copy_libs FILE...: copy the shared libraries (and the loader) ldd lists.
copy_libs() {
	local lib
	# ldd lines: "libx.so => /path (0x..)" or "/lib64/ld-linux-x86-64.so.2 (0x..)".
	for lib in $(ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u); do
		[ -e "$root$lib" ] || copy_file "$lib"
	done
}

install -D -m 0755 "$binary" "$root/vxbridge"

# iptables: the multi-call binary in /usr/sbin (on the plugin's PATH), with the
# names it dispatches on as links.
mkdir -p "$root/usr/sbin"
cp -L "$multi" "$root/usr/sbin/$(basename "$multi")"
for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	ln -sf "$(basename "$multi")" "$root/usr/sbin/$name"
done
copy_libs "$multi"

# Match/target modules are dlopen()ed at run time (-m comment, -m addrtype, ...),
# so ldd of the binary does not list them: take the whole folder and their libs.
mkdir -p "$root$xtlibdir"
cp -a "$xtlibdir/." "$root$xtlibdir/"
copy_libs "$xtlibdir"/*.so

# /etc/protocols and /etc/services: iptables resolves "tcp", "http", ... by name.
mkdir -p "$root/etc"
for f in /etc/protocols /etc/services; do
	[ -f "$f" ] && cp -L "$f" "$root$f"
done

# /run holds the plugin socket, /var/lib/vxbridge is the state mount point.
mkdir -p "$root/run" "$root/tmp" "$root/var/lib/vxbridge" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"

cp "$repo/config.json" "$out/config.json"

# Check that iptables runs in the rootfs, found through the PATH a managed
# plugin gets, and that it loads the modules Docker's own rules use.
plugin_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
in_root() { env -i PATH=$plugin_path chroot "$root" "$@"; }
in_root iptables -L -n >/dev/null || die "iptables -L fails inside $root"
in_root iptables -t nat -L -n >/dev/null || die "iptables -t nat -L fails inside $root"
in_root iptables-save >/dev/null || die "iptables-save fails inside $root"
for m in comment addrtype conntrack multiport; do
	in_root iptables -m "$m" -h >/dev/null 2>&1 || die "iptables module $m does not load inside $root"
done

echo "rootfs.sh: $out ready ($(du -sh "$root" | cut -f1), iptables: $(in_root iptables --version))"
