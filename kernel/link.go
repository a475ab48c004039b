// Package kernel holds the small netlink helpers that both the bridge
// driver (driver/) and the VXLAN data path (overlay/) need.
package kernel

import (
	"errors"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LinkNotFound reports whether err says a link does not exist: netlink's own
// lookup error, or the kernel's ENODEV from a call on a vanished link.
func LinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// Prefix is netlink's address with its mask as a netip.Prefix (IPv4 unmapped).
func Prefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
