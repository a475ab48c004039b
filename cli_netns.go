package main

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/kernel"
	"github.com/vxbridge/vxbridge/reconcile"
)

// The container's side of doctor: its interface for each vxbridge network
// (present, up, its address, the network's MTU) and its default route.
//
// These checks run here, in the CLI, not in the plugin: a managed plugin
// lives in a PID namespace of its own, so reaching a container's network
// namespace from it would take "pidhost" in config.json, every container's
// processes visible to the plugin for the sake of a diagnosis. The CLI
// already runs as root on the host and already asks dockerd for the
// container (its PID); it opens a netlink socket inside the container's
// namespace (netlink.NewHandleAt switches one locked thread there for the
// socket's creation only) and reads, never writes. It reads none of the
// plugin's files: the network's settings come from the plugin's answer.

// containerTarget is a container doctor was given by name or ID.
type containerTarget struct {
	name string
	c    reconcile.Container
}

// containerChecks checks ct's side of its endpoints on vxbridge networks.
func containerChecks(ct containerTarget, st driver.State) []driver.Check {
	var checks []driver.Check
	add := func(name string, ok bool, fix string) {
		c := driver.Check{Name: "container " + ct.name + ": " + name, OK: ok}
		if !ok {
			c.Fix = fix
		}
		checks = append(checks, c)
	}
	if !ct.c.State.Running || ct.c.State.Pid == 0 {
		add("running", false, fmt.Sprintf("it is not running, it has no network; fix: docker start %s", ct.name))
		return checks
	}
	pid := ct.c.State.Pid
	ns, err := netns.GetFromPid(pid)
	if err == nil {
		defer ns.Close()
		var h *netlink.Handle
		if h, err = netlink.NewHandleAt(ns); err == nil {
			defer h.Close()
			containerSide(ct, st, h, add)
			return checks
		}
	}
	add("network namespace readable", false, fmt.Sprintf("cannot enter the network namespace of its process %d: %v; fix: run vxbridge doctor as root on the container's host", pid, err))
	return checks
}

// containerSide runs the checks through h, a handle in the container's
// network namespace, in a packet's order: interface, address, MTU, route.
func containerSide(ct containerTarget, st driver.State, h *netlink.Handle, add func(string, bool, string)) {
	links, err := h.LinkList()
	if err != nil {
		add("interfaces readable", false, fmt.Sprintf("cannot list its interfaces: %v", err))
		return
	}
	pid := ct.c.State.Pid
	in := func(cmd string) string { return fmt.Sprintf("nsenter -t %d -n %s", pid, cmd) }
	// The container's interfaces on vxbridge networks that are up with
	// their addresses, to check the default route against.
	type upIf struct {
		link netlink.Link
		net  *driver.Network
	}
	var ups []upIf
	for _, netName := range slices.Sorted(maps.Keys(ct.c.NetworkSettings.Networks)) {
		id := ct.c.NetworkSettings.Networks[netName].EndpointID
		i := slices.IndexFunc(st.Endpoints, func(ep *driver.Endpoint) bool { return ep.ID == id })
		if i < 0 {
			continue // not on a vxbridge network
		}
		ep := st.Endpoints[i]
		i = slices.IndexFunc(st.Networks, func(n *driver.Network) bool { return n.ID == ep.NetworkID })
		if i < 0 {
			continue
		}
		n := st.Networks[i]
		mac, _ := net.ParseMAC(ep.MAC)
		i = slices.IndexFunc(links, func(l netlink.Link) bool { return bytes.Equal(l.Attrs().HardwareAddr, mac) })
		if i < 0 {
			add(fmt.Sprintf("interface on %s (MAC %s) exists", netName, ep.MAC), false,
				fmt.Sprintf("no interface in its network namespace has the endpoint's MAC: it was removed or changed; fix: docker restart %s", ct.name))
			continue
		}
		l := links[i]
		a := l.Attrs()
		what := fmt.Sprintf("%s on %s", a.Name, netName)
		up := a.Flags&net.FlagUp != 0
		ready := up // up with its addresses: a route through it can be asked for
		add(what+" up", up, fmt.Sprintf("it is down: the container is cut off from %s; fix: %s (or docker restart %s)", netName, in("ip link set "+a.Name+" up"), ct.name))
		for _, want := range []netip.Prefix{ep.Addr4, ep.Addr6} {
			if !want.IsValid() {
				continue
			}
			family := netlink.FAMILY_V4
			if want.Addr().Is6() {
				family = netlink.FAMILY_V6
			}
			addrs, err := h.AddrList(l, family)
			has := err == nil && slices.ContainsFunc(addrs, func(x netlink.Addr) bool {
				p, ok := kernel.Prefix(x.IPNet)
				return ok && p == want
			})
			fix := fmt.Sprintf("the endpoint's address is not on the interface: nothing reaches the container at it; fix: %s (or docker restart %s)", in("ip addr add "+want.String()+" dev "+a.Name), ct.name)
			if err != nil {
				fix = fmt.Sprintf("cannot list its addresses: %v", err)
			}
			add(fmt.Sprintf("%s holds %s", what, want), has, fix)
			ready = ready && has
		}
		add(fmt.Sprintf("%s MTU %d", what, n.Options.MTU), a.MTU == n.Options.MTU,
			fmt.Sprintf("its MTU is %d, the network's %d: large packets are dropped; fix: %s", a.MTU, n.Options.MTU, in(fmt.Sprintf("ip link set %s mtu %d", a.Name, n.Options.MTU))))
		if ready {
			ups = append(ups, upIf{l, n})
		}
	}
	// The default route: a container on several networks has one, through
	// whichever network dockerd chose to give the gateway (maybe not a
	// vxbridge one). It is checked when it goes through one of ours (its
	// gateway must be that network's) or when there is none at all while
	// one of ours could give it. An interface down or without its address
	// lost its routes with it: that is already named above.
	var gw4 []upIf
	for _, u := range ups {
		if !u.net.Options.Internal && u.net.Gateway4.IsValid() {
			gw4 = append(gw4, u)
		}
	}
	if len(gw4) == 0 {
		return
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		add("default route", false, fmt.Sprintf("cannot list its routes: %v", err))
		return
	}
	i := slices.IndexFunc(routes, func(r netlink.Route) bool {
		p, ok := netip.Prefix{}, r.Dst == nil
		if !ok {
			p, ok = kernel.Prefix(r.Dst)
			ok = ok && p.Bits() == 0
		}
		return ok
	})
	if i < 0 {
		u := gw4[0]
		add("default route", false, fmt.Sprintf("it has none: it reaches nothing beyond its networks; fix: %s (or docker restart %s)",
			in(fmt.Sprintf("ip route add default via %s dev %s", u.net.Gateway4.Addr(), u.link.Attrs().Name)), ct.name))
		return
	}
	r := routes[i]
	for _, u := range gw4 {
		if r.LinkIndex != u.link.Attrs().Index {
			continue
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		want := u.net.Gateway4.Addr()
		add(fmt.Sprintf("default route via %s on %s", want, u.link.Attrs().Name), gw.Unmap() == want,
			fmt.Sprintf("it goes via %s, not the network's gateway: traffic leaving the network is lost; fix: %s (or docker restart %s)",
				gw, in(fmt.Sprintf("ip route replace default via %s dev %s", want, u.link.Attrs().Name)), ct.name))
	}
}
