package driver

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The resolver for cross-host names (package names) has two kinds of
// address on each host running overlays:
//   - ResolverAddr, where the IPv4 DNS queries leaving an overlay bridge
//     are DNATed: the zero-flag path, which needs nothing on the host;
//   - addresses of its own, ResolverIPv4 and ResolverIPv6, port 53: the
//     one-time per-host setting (dockerd's `dns`) names the first, internal
//     overlays get a route to it, and IPv6 queries are DNATed to the second
//     (IPv6 has no route_localnet).
//
// 169.254.53.53 is link-local: never routed off a link, in no Docker pool,
// and the same on every host, so one daemon.json fits all. The IPv6 one is
// a unique local address (RFC 4193) of vxbridge's own. Both sit on the
// host's loopback link as /32 and /128: every container reaches them
// through its default route, whatever its network, and the link is always
// there (a dummy link needs a kernel module some hosts lack) and never one
// of Repair's.
const (
	ResolverAddr = "127.0.0.1:53530"
	resolverLink = "lo"
)

var (
	ResolverIPv4 = netip.MustParseAddr("169.254.53.53")
	ResolverIPv6 = netip.MustParseAddr("fd53:7862:7264::53")
)

// EnsureResolverAddrs puts the resolver's addresses on the loopback link;
// it is idempotent, and reports whether it added anything. An IPv6 address
// that cannot be added (IPv6 disabled on the host) is left out: v6 is
// false.
func EnsureResolverAddrs() (changed, v6 bool, err error) {
	link, err := netlink.LinkByName(resolverLink)
	if err != nil {
		return false, false, fmt.Errorf("look up link %s: %w", resolverLink, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return false, false, fmt.Errorf("list addresses of %s: %w", resolverLink, err)
	}
	have := map[netip.Addr]bool{}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			have[ip.Unmap()] = true
		}
	}
	v6 = have[ResolverIPv6]
	for _, ip := range []netip.Addr{ResolverIPv4, ResolverIPv6} {
		if have[ip] {
			continue
		}
		addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(ip, ip.BitLen()))}
		if ip.Is6() {
			addr.Flags = unix.IFA_F_NODAD // usable at once
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			if ip.Is6() {
				continue // no IPv6 on this host
			}
			return changed, v6, fmt.Errorf("add %s to %s: %w", ip, resolverLink, err)
		}
		changed = true
		v6 = v6 || ip.Is6()
	}
	return changed, v6, nil
}
