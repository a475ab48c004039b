package driver

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/vxbridge/vxbridge/kernel"
)

func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// randomMAC fills mac with a random unicast, locally administered address.
func randomMAC(mac net.HardwareAddr) {
	rand.Read(mac)
	mac[0] = (mac[0] | 0x02) &^ 0x01
}

// HostPrefixes lists the prefixes this host routes or has addresses in,
// default routes excepted, so the IPAM never picks a subnet that would
// shadow a route the host already uses (Docker's own networks included).
func HostPrefixes() ([]netip.Prefix, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if p, ok := kernel.Prefix(r.Dst); ok && p.Bits() > 0 && !p.Addr().IsLinkLocalUnicast() && !p.Addr().IsMulticast() {
			out = append(out, p)
		}
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := kernel.Prefix(a.IPNet); ok && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

// underlayMTU is the MTU of the interface that holds the tunnel address.
func underlayMTU(vtep netip.Addr) (int, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := kernel.Prefix(a.IPNet); ok && p.Addr() == vtep {
			link, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, fmt.Errorf("look up the interface of %s: %w", vtep, err)
			}
			return link.Attrs().MTU, nil
		}
	}
	return 0, fmt.Errorf("tunnel address %s is not an address of this host (set VXBRIDGE_VTEP)", vtep)
}
