package driver

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/vxbridge/vxbridge/cluster"
	"github.com/vxbridge/vxbridge/kernel"
	"github.com/vxbridge/vxbridge/overlay"
)

// What an operator asks the running plugin (`vxbridge doctor`, `peers`,
// `forget-host`): the checks run here, in the host's network namespace and
// beside the records, and the CLI only prints them.

// Check is one thing that must hold for traffic to flow.
type Check struct {
	Name string
	OK   bool
	// Fix says, for a failed check, why it fails and how to fix it.
	Fix string `json:",omitempty"`
}

// ipForwardPath is read, never written: the plugin's /proc/sys may be
// read-only, and turning forwarding on is the operator's call.
var ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// Doctor checks, in the order a packet needs them, what traffic to and
// from targets needs: each target is an endpoint ID or a container address,
// on this host or (overlays) another one. No targets: every network and
// endpoint of this host.
func (d *Driver) Doctor(ctx context.Context, targets []string) ([]Check, error) {
	st, err := d.State()
	if err != nil {
		return nil, err
	}
	// Held while checking, so a repair does not run half way through.
	d.mu.RLock()
	defer d.mu.RUnlock()
	doc := &doctor{d: d, ctx: ctx, mtuReported: map[string]bool{}}

	// Which networks and endpoints are concerned, and which remote
	// endpoints (overlays) the targets name.
	nets := st.Networks
	eps := st.Endpoints
	var remote []cluster.Endpoint
	if len(targets) > 0 {
		nets, eps = nil, nil
		for _, t := range targets {
			ep := findEndpoint(st.Endpoints, t)
			if ep != nil {
				eps = append(eps, ep)
				if n := findNetwork(st.Networks, ep.NetworkID); n != nil && !slices.Contains(nets, n) {
					nets = append(nets, n)
				}
				continue
			}
			rep, err := doc.findRemote(t)
			switch {
			case err != nil:
				doc.add("endpoint "+t+" known", false, fmt.Sprintf("it is on no network of this host, and the cluster cannot be asked: %v", err))
			case rep == nil:
				doc.add("endpoint "+t+" known", false, "no container on a vxbridge network has that address or endpoint ID, here or on a live host of the cluster; fix: check the address (docker inspect); a container on another host whose plugin is stopped is gone from the cluster with that host's session (vxbridge peers lists the live hosts)")
			default:
				remote = append(remote, *rep)
				for _, n := range st.Networks {
					if n.VNI != 0 && n.Options.Overlay == rep.Overlay && !slices.Contains(nets, n) {
						nets = append(nets, n)
					}
				}
			}
		}
	}

	doc.ipForward()
	doc.fixedRules()
	overlays := slices.ContainsFunc(nets, func(n *Network) bool { return n.VNI != 0 })
	if overlays || (len(targets) == 0 && d.cluster != nil) {
		doc.consul()
	}
	for _, n := range nets {
		var mine []*Endpoint
		for _, ep := range eps {
			if ep.NetworkID == n.ID {
				mine = append(mine, ep)
			}
		}
		doc.network(n, mine, remote, len(targets) == 0)
	}
	return doc.checks, nil
}

type doctor struct {
	d      *Driver
	ctx    context.Context
	checks []Check
	hosts  []cluster.Host // live members, once asked
	asked  bool
	hErr   error
	// mtuReported: ports whose wrong MTU a check already names.
	mtuReported map[string]bool
}

func (doc *doctor) add(name string, ok bool, fix string) {
	c := Check{Name: name, OK: ok}
	if !ok {
		c.Fix = fix
	}
	doc.checks = append(doc.checks, c)
}

func findEndpoint(eps []*Endpoint, t string) *Endpoint {
	a, _ := netip.ParseAddr(t)
	for _, ep := range eps {
		if ep.ID == t || (a.IsValid() && (ep.Addr4.Addr() == a || ep.Addr6.Addr() == a)) {
			return ep
		}
	}
	return nil
}

func findNetwork(nets []*Network, id string) *Network {
	for _, n := range nets {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// findRemote looks t up among the endpoints other hosts advertise.
func (doc *doctor) findRemote(t string) (*cluster.Endpoint, error) {
	if doc.d.cluster == nil {
		return nil, nil
	}
	all, err := doc.d.cluster.Endpoints("")
	if err != nil {
		return nil, err
	}
	a, _ := netip.ParseAddr(t)
	for _, ep := range all {
		if ep.Host != doc.d.cluster.Host() && (ep.ID == t || (a.IsValid() && (ep.IPv4 == a || ep.IPv6 == a))) {
			return &ep, nil
		}
	}
	return nil, nil
}

func (doc *doctor) liveHosts() ([]cluster.Host, error) {
	if !doc.asked {
		doc.hosts, doc.hErr = doc.d.cluster.Hosts()
		doc.asked = true
	}
	return doc.hosts, doc.hErr
}

func (doc *doctor) ipForward() {
	b, err := os.ReadFile(ipForwardPath)
	switch {
	case err != nil:
		doc.add("ip_forward on", false, fmt.Sprintf("cannot read %s: %v", ipForwardPath, err))
	default:
		doc.add("ip_forward on", string(bytes.TrimSpace(b)) == "1",
			"the host does not forward IPv4: containers cannot reach other networks, the outside or published ports; fix: sysctl -w net.ipv4.ip_forward=1 (dockerd sets it at start)")
	}
}

// fixedRules checks the jumps into vxbridge's chains and Docker's
// isolation: the rules every host has whatever its networks.
func (doc *doctor) fixedRules() {
	var rs []rule
	for _, r := range fixed {
		rs = append(rs, r.rule)
	}
	doc.rules("vxbridge's chains and jumps (FORWARD, DOCKER-USER, nat, raw)", rs, true)
}

// rules checks that every rule of rs is in place.
func (doc *doctor) rules(name string, rs []rule, ipv6 bool) {
	missing, err := doc.d.fw.missing(rs, ipv6)
	switch {
	case err != nil:
		doc.add(name, false, fmt.Sprintf("cannot list the rules: %v", err))
	case len(missing) > 0:
		doc.add(name, false, fmt.Sprintf("%d rule(s) missing, e.g. %s; fix: vxbridge reconcile (it restores them)", len(missing), missing[0]))
	default:
		doc.add(name, true, "")
	}
}

// network checks one network in packet order: the containers' veths, the
// bridge, the rules, published ports, then (overlay) the tunnel.
func (doc *doctor) network(n *Network, eps []*Endpoint, remote []cluster.Endpoint, all bool) {
	what := "network " + short(n.ID, 12)
	if n.Options.Overlay != "" {
		what = "overlay " + n.Options.Overlay
	}
	br := n.Options.Bridge
	if why := doc.d.broken[n.ID]; why != "" {
		doc.add(what+" repaired", false, "the last repair failed: "+why+"; fix that, then: vxbridge reconcile")
	}
	brLink, err := netlink.LinkByName(br)
	if err != nil {
		doc.add(fmt.Sprintf("%s: bridge %s exists", what, br), false, fmt.Sprintf("%v; fix: vxbridge reconcile (it recreates it)", err))
	}
	for _, ep := range eps {
		doc.veth(what, n, ep, brLink)
	}
	if brLink != nil {
		a := brLink.Attrs()
		doc.add(fmt.Sprintf("%s: bridge %s up", what, br), a.Flags&net.FlagUp != 0, fmt.Sprintf("it is down, nothing crosses it; fix: ip link set %s up", br))
		doc.bridgeMTU(what, n, brLink)
		doc.gateways(what, n, brLink)
	}
	doc.rules(what+": forwarding, conntrack, isolation and ICC rules", networkRules(n), n.Options.IPv6)
	for _, ep := range eps {
		if len(ep.Ports) > 0 {
			doc.rules(fmt.Sprintf("%s: published ports of %s (DNAT)", what, epName(ep)), endpointPortRules(n, ep), false)
		}
	}
	if n.VNI != 0 {
		doc.tunnel(what, n, brLink, remote, all)
	}
}

func epName(ep *Endpoint) string {
	if ep.Addr4.IsValid() {
		return ep.Addr4.Addr().String()
	}
	return short(ep.ID, 12)
}

func (doc *doctor) veth(what string, n *Network, ep *Endpoint, br netlink.Link) {
	name := fmt.Sprintf("%s: container %s: veth %s", what, epName(ep), ep.HostIf)
	link, err := netlink.LinkByName(ep.HostIf)
	if err != nil {
		doc.add(name+" exists", false, fmt.Sprintf("%v: the container's interface is gone; fix: restart the container (vxbridge reconcile drops the stale endpoint)", err))
		return
	}
	a := link.Attrs()
	if br != nil {
		doc.add(name+" attached to "+n.Options.Bridge, a.MasterIndex == br.Attrs().Index,
			fmt.Sprintf("it is not a port of the bridge; fix: vxbridge reconcile (it reattaches it) or ip link set %s master %s", ep.HostIf, n.Options.Bridge))
	}
	doc.add(name+" up", a.Flags&net.FlagUp != 0, fmt.Sprintf("it is down, the container is cut off; fix: ip link set %s up", ep.HostIf))
	if a.MTU != n.Options.MTU {
		doc.mtuReported[ep.HostIf] = true
	}
	doc.add(fmt.Sprintf("%s MTU %d", name, n.Options.MTU), a.MTU == n.Options.MTU,
		fmt.Sprintf("its MTU is %d, the network's %d: large packets are dropped; fix: ip link set %s mtu %d", a.MTU, n.Options.MTU, ep.HostIf, n.Options.MTU))
}

// bridgeMTU checks the bridge's MTU. A bridge takes its smallest port's
// MTU: when a port already reported explains it, that port is the one
// broken piece and the bridge is not named again.
func (doc *doctor) bridgeMTU(what string, n *Network, br netlink.Link) {
	a := br.Attrs()
	fix := fmt.Sprintf("its MTU is %d, the network's %d; fix: ip link set %s mtu %d", a.MTU, n.Options.MTU, a.Name, n.Options.MTU)
	if a.MTU != n.Options.MTU {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if la := l.Attrs(); la.MasterIndex == a.Index && la.MTU == a.MTU {
				if doc.mtuReported[la.Name] {
					return
				}
				fix = fmt.Sprintf("its MTU is %d, as its port %s's (a bridge takes its smallest port's); fix: ip link set %s mtu %d", a.MTU, la.Name, la.Name, n.Options.MTU)
				break
			}
		}
	}
	doc.add(fmt.Sprintf("%s: bridge %s MTU %d", what, a.Name, n.Options.MTU), a.MTU == n.Options.MTU, fix)
}

// gateways checks the bridge holds the network's gateway addresses.
func (doc *doctor) gateways(what string, n *Network, br netlink.Link) {
	addrs, err := netlink.AddrList(br, netlink.FAMILY_ALL)
	for _, gw := range []netip.Prefix{n.Gateway4, n.Gateway6} {
		if !gw.IsValid() {
			continue
		}
		name := fmt.Sprintf("%s: bridge %s holds gateway %s", what, n.Options.Bridge, gw)
		if err != nil {
			doc.add(name, false, fmt.Sprintf("cannot list its addresses: %v", err))
			continue
		}
		found := slices.ContainsFunc(addrs, func(a netlink.Addr) bool {
			p, ok := kernel.Prefix(a.IPNet)
			return ok && p == gw
		})
		doc.add(name, found, fmt.Sprintf("containers have no way out of their network; fix: vxbridge reconcile (or ip addr add %s dev %s)", gw, n.Options.Bridge))
	}
}

// tunnel checks an overlay's VXLAN device, the underlay's MTU, the
// entries for remote endpoints and their hosts' sessions.
func (doc *doctor) tunnel(what string, n *Network, br netlink.Link, remote []cluster.Endpoint, all bool) {
	dev := overlay.DeviceName(n.VNI)
	name := fmt.Sprintf("%s: VXLAN device %s (VNI %d)", what, dev, n.VNI)
	if doc.d.cluster == nil || doc.d.datapath == nil {
		doc.add(name, false, "this host has not joined the cluster (yet): check CONSUL_HTTP_ADDR and the plugin's log")
		return
	}
	link, err := netlink.LinkByName(dev)
	if err != nil {
		doc.add(name+" exists", false, fmt.Sprintf("%v; fix: vxbridge reconcile (it recreates it)", err))
		return
	}
	a := link.Attrs()
	doc.add(name+" up", a.Flags&net.FlagUp != 0, fmt.Sprintf("it is down, no traffic leaves for other hosts; fix: ip link set %s up", dev))
	if br != nil {
		doc.add(name+" attached to "+n.Options.Bridge, a.MasterIndex == br.Attrs().Index,
			fmt.Sprintf("it is not a port of the bridge; fix: ip link set %s master %s", dev, n.Options.Bridge))
	}
	if under, err := underlayMTU(doc.d.cluster.VTEP()); err == nil {
		doc.add(fmt.Sprintf("%s: MTU %d fits the underlay (%d less %d for VXLAN)", what, n.Options.MTU, under, vxlanOverhead),
			n.Options.MTU+vxlanOverhead <= under,
			fmt.Sprintf("large packets between hosts are dropped; fix: recreate the network with -o com.docker.network.driver.mtu=%d", under-vxlanOverhead))
	}
	ctx, cancel := context.WithTimeout(doc.ctx, clusterTimeout)
	defer cancel()
	st, err := doc.d.datapath.Status(ctx, n.VNI)
	if err != nil {
		doc.add(what+": FDB and neighbour entries", false, fmt.Sprintf("cannot read them: %v", err))
		return
	}
	var mine []cluster.Endpoint
	for _, ep := range remote {
		if ep.Overlay == n.Options.Overlay {
			mine = append(mine, ep)
		}
	}
	doc.fastPath(what, st)
	if all {
		doc.entries(what+": FDB and neighbour entries for every remote container", st.Missing, st.Stale)
		return
	}
	for _, ep := range mine {
		mac, _ := net.ParseMAC(ep.MAC)
		concerns := func(e overlay.Entry) bool { return bytes.Equal(e.MAC, mac) }
		doc.entries(fmt.Sprintf("%s: FDB and neighbour entries for %s on host %s", what, ep.IPv4, ep.Host),
			slices.DeleteFunc(slices.Clone(st.Missing), func(e overlay.Entry) bool { return !concerns(e) }),
			slices.DeleteFunc(slices.Clone(st.Stale), func(e overlay.Entry) bool { return !concerns(e) }))
		hosts, err := doc.liveHosts()
		alive := err == nil && slices.ContainsFunc(hosts, func(h cluster.Host) bool { return h.Name == ep.Host })
		fix := fmt.Sprintf("host %s has no live session in Consul: its plugin is stopped or cut off from Consul; check it there (docker plugin ls, its log)", ep.Host)
		if err != nil {
			fix = fmt.Sprintf("cannot ask Consul: %v", err)
		}
		doc.add(fmt.Sprintf("%s: host %s's session", what, ep.Host), alive, fix)
	}
}

func (doc *doctor) entries(name string, missing, stale []overlay.Entry) {
	var why []string
	if len(missing) > 0 {
		why = append(why, fmt.Sprintf("%d missing (e.g. %s)", len(missing), missing[0]))
	}
	if len(stale) > 0 {
		why = append(why, fmt.Sprintf("%d stale (e.g. %s)", len(stale), stale[0]))
	}
	doc.add(name, len(why) == 0, strings.Join(why, ", ")+"; fix: restart the plugin (docker plugin disable -f vxbridge:latest; docker plugin enable vxbridge:latest): it programs every entry anew, containers keep running")
}

// fastPath checks the tc filters that take tunnel traffic past the bridge
// (overlay/fastpath.go). One left behind sends frames astray; one missing
// only slows traffic, and none are wanted when this kernel cannot have
// them.
func (doc *doctor) fastPath(what string, st overlay.Status) {
	name := what + ": fast-path filters (tc) on its veths and VXLAN device"
	missing := st.FastMissing
	if st.FastOff != "" {
		name += fmt.Sprintf(" (fast path off: %s; traffic takes the bridge)", st.FastOff)
		missing = nil
	}
	var why []string
	if len(st.FastStale) > 0 {
		why = append(why, fmt.Sprintf("%d stale (e.g. %s): frames for that MAC go astray", len(st.FastStale), st.FastStale[0]))
	}
	if len(missing) > 0 {
		why = append(why, fmt.Sprintf("%d missing (e.g. %s): that traffic takes the bridge, slower", len(missing), missing[0]))
	}
	doc.add(name, len(why) == 0, strings.Join(why, ", ")+"; fix: vxbridge reconcile (it sets them anew)")
}

func (doc *doctor) consul() {
	if doc.d.cluster == nil {
		doc.add("Consul reachable", false, "this host has not joined the cluster (yet): check CONSUL_HTTP_ADDR and the plugin's log")
		return
	}
	hosts, err := doc.liveHosts()
	if err != nil {
		doc.add("Consul reachable", false, fmt.Sprintf("%v: overlays keep their last entries, but nothing new is learnt; check the Consul agent", err))
		return
	}
	doc.add("Consul reachable", true, "")
	me := doc.d.cluster.Host()
	doc.add("this host ("+me+") has a live session", slices.ContainsFunc(hosts, func(h cluster.Host) bool { return h.Name == me }),
		"other hosts do not see this host's containers; the plugin re-registers by itself once Consul answers: see its log")
}
