package driver

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vxbridge/vxbridge/kernel"
)

// ensureBridge makes the network's bridge exist, up, with its MTU and
// gateway addresses. It is idempotent: CreateNetwork and the start-up
// restore both call it.
func ensureBridge(n *Network) error {
	name := n.Options.Bridge
	link, err := netlink.LinkByName(name)
	if err != nil {
		if !kernel.LinkNotFound(err) {
			return fmt.Errorf("look up bridge %s: %w", name, err)
		}
		la := netlink.NewLinkAttrs()
		la.Name = name
		la.MTU = n.Options.MTU
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("look up bridge %s: %w", name, err)
		}
	} else if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("create bridge %s: an interface of type %s has that name", name, link.Type())
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
	if !n.Options.Internal {
		// Ports published on 127.0.0.1 are DNATed out of this bridge with
		// a loopback source, which the kernel drops unless allowed here.
		if err := setRouteLocalnet(link); err != nil {
			return fmt.Errorf("allow localhost ports on bridge %s: %w", name, err)
		}
	}
	return nil
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

// ipv4DevconfRouteLocalnet is IPV4_DEVCONF_ROUTE_LOCALNET from linux/ip.h.
const ipv4DevconfRouteLocalnet = 26

// setRouteLocalnet sets net.ipv4.conf.<link>.route_localnet=1 over
// netlink: a managed plugin sees /proc/sys read-only, but CAP_NET_ADMIN
// may still change a device's IPv4 settings this way.
func setRouteLocalnet(link netlink.Link) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(link.Attrs().Index)
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	conf := spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil)
	conf.AddRtAttr(ipv4DevconfRouteLocalnet, nl.Uint32Attr(1))
	req.AddData(spec)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}
