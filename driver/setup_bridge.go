package driver

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vxbridge/vxbridge/kernel"
)

// ensureBridge makes the network's bridge exist, up, with its MAC, MTU and
// gateway addresses. It is idempotent: CreateNetwork and the start-up
// restore both call it.
func ensureBridge(n *Network) error {
	name := n.Options.Bridge
	mac := gatewayMAC(n)
	link, err := netlink.LinkByName(name)
	if err != nil {
		if !kernel.LinkNotFound(err) {
			return fmt.Errorf("look up bridge %s: %w", name, err)
		}
		la := netlink.NewLinkAttrs()
		la.Name = name
		la.MTU = n.Options.MTU
		la.HardwareAddr = mac
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("look up bridge %s: %w", name, err)
		}
	} else if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("create bridge %s: an interface of type %s has that name", name, link.Type())
	}
	// ARP notify: a MAC that changes (a bridge made by an earlier version
	// gets its fixed one below) is announced to the containers at once.
	conf := []ipv4Conf{{ipv4DevconfArpNotify, 1}}
	if !n.Options.Internal {
		// Ports published on 127.0.0.1 are DNATed out of this bridge with
		// a loopback source, which the kernel drops unless allowed here.
		conf = append(conf, ipv4Conf{ipv4DevconfRouteLocalnet, 1})
	}
	if err := setIPv4Conf(link, conf); err != nil {
		return fmt.Errorf("set IPv4 settings of bridge %s: %w", name, err)
	}
	if !bytes.Equal(link.Attrs().HardwareAddr, mac) {
		// Only when it differs: every set flushes the bridge's neighbours.
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return fmt.Errorf("set MAC %s on bridge %s: %w", mac, name, err)
		}
	}
	if link.Attrs().MTU != n.Options.MTU {
		if err := netlink.LinkSetMTU(link, n.Options.MTU); err != nil {
			return fmt.Errorf("set MTU %d on bridge %s: %w", n.Options.MTU, name, err)
		}
	}
	for _, gw := range []netip.Prefix{n.Gateway4, n.Gateway6} {
		if !gw.IsValid() {
			continue
		}
		addr := &netlink.Addr{IPNet: ipNet(gw)}
		if gw.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD // usable at once, not after DAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("add gateway %s to bridge %s: %w", gw, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return nil
}

// gatewayMAC is the bridge's MAC, set explicitly: a Linux bridge whose MAC
// was never set takes its lowest port's, so it would change as containers
// come and go, and containers' ARP entries for the gateway would go stale.
// It is derived from the gateway's address as a container's is from its
// own (macFor; no container holds the gateway's address), so it is the
// same after the bridge is re-made, after a restart, and on every host of
// an overlay (each host's bridge answers for the same gateway).
func gatewayMAC(n *Network) net.HardwareAddr {
	gw := n.Gateway4.Addr()
	if !gw.Is4() {
		// An IPv6-only network: the low four bytes of its gateway.
		a := n.Gateway6.Addr().As16()
		gw = netip.AddrFrom4([4]byte(a[12:]))
	}
	mac, _ := net.ParseMAC(macFor(netip.PrefixFrom(gw, 32)))
	return mac
}

// deleteLink removes a bridge or a veth pair (by its host end); one
// already gone is success: a container whose namespace died took its pair
// with it.
func deleteLink(kind, name string) error {
	link, err := netlink.LinkByName(name)
	if kernel.LinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s %s: %w", kind, name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !kernel.LinkNotFound(err) {
		return fmt.Errorf("delete %s %s: %w", kind, name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// IPV4_DEVCONF_ARP_NOTIFY and _ROUTE_LOCALNET from linux/ip.h.
const (
	ipv4DevconfArpNotify     = 22
	ipv4DevconfRouteLocalnet = 26
)

type ipv4Conf struct{ key, value uint32 }

// setIPv4Conf sets net.ipv4.conf.<link>.* values over netlink: a managed
// plugin sees /proc/sys read-only, but CAP_NET_ADMIN may still change a
// device's IPv4 settings this way.
func setIPv4Conf(link netlink.Link, conf []ipv4Conf) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(link.Attrs().Index)
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	attrs := spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil)
	for _, c := range conf {
		attrs.AddRtAttr(int(c.key), nl.Uint32Attr(c.value))
	}
	req.AddData(spec)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}
