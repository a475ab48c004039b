package driver

import (
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
)

// Repairs says what one Repair changed; all zero means the kernel already
// matched the records.
type Repairs struct {
	Networks        int // recorded networks whose bridge and rules were re-asserted
	StaleEndpoints  int // records whose veth was gone (the container died unseen): dropped
	ReattachedVeths int // veths put back on their (recreated) bridge
	PublishedPorts  int // published ports held and programmed again
	OrphanLinks     int // vxbridge bridges and veths that no record owns: deleted
	OrphanRules     int // tagged rules that no record owns: deleted
	RulesRestored   bool
}

func (r Repairs) changed() bool {
	return r.RulesRestored || r.StaleEndpoints+r.ReattachedVeths+r.OrphanLinks+r.OrphanRules > 0
}

// Repair makes the kernel match the records, both ways: it re-creates
// what a record says should exist (chains, bridges, rules, published
// ports, veths on their bridge) and deletes what vxbridge made but no
// record owns any more. It runs at start, before any request is served,
// and on demand; it holds the driver's write lock, so no request is half
// way while it looks.
func (d *Driver) Repair() (Repairs, error) {
	var rep Repairs
	// The chains and fixed rules belong to no record: checking them (two
	// dozen iptables runs) needs no lock, so requests do not wait on it.
	if err := d.fw.setup(); err != nil {
		return rep, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	nets, err := loadAll[Network](d.store, networkKeys)
	if err != nil {
		return rep, fmt.Errorf("load networks: %w", err)
	}
	bridges := map[string]*Network{}
	tags := map[string]bool{}
	var want []ruleSet
	for _, n := range nets {
		if err := ensureBridge(n); err != nil {
			return rep, fmt.Errorf("repair network %s: %w", short(n.ID, 12), err)
		}
		want = append(want, ruleSet{networkRules(n), n.Options.IPv6})
		rep.Networks++
		bridges[n.Options.Bridge] = n
		tags[short(n.ID, 12)] = true
	}
	eps, err := loadAll[Endpoint](d.store, endpointKeys)
	if err != nil {
		return rep, fmt.Errorf("load endpoints: %w", err)
	}
	veths := map[string]bool{}
	for _, ep := range eps {
		n, err := load[Network](d.store, networkKey(ep.NetworkID))
		if err != nil {
			n = nil // an endpoint outliving its network record: stale
		}
		link, lerr := netlink.LinkByName(ep.HostIf)
		if n == nil || lerr != nil {
			// A veth dies with its container's namespace: the container
			// went while dockerd could not tell us.
			if err := d.teardownEndpoint(ep); err != nil {
				return rep, err
			}
			rep.StaleEndpoints++
			continue
		}
		veths[ep.HostIf] = true
		if reattached, err := attachVeth(link, n.Options.Bridge); err != nil {
			return rep, err
		} else if reattached {
			rep.ReattachedVeths++
		}
		if len(ep.Ports) > 0 {
			d.holdPorts(ep)
			want = append(want, ruleSet{endpointPortRules(n, ep), false})
			rep.PublishedPorts += len(ep.Ports)
			tags[short(n.ID, 12)+":"+short(ep.ID, 12)] = true
		}
	}
	if rep.OrphanLinks, err = deleteOrphanLinks(bridges, veths); err != nil {
		return rep, err
	}
	if rep.OrphanRules, err = d.fw.removeOrphans(tags); err != nil {
		return rep, err
	}
	// Re-asserting every rule costs an iptables run each; counting the
	// chains' tagged rules first makes the periodic pass cheap.
	if intact, err := d.fw.intact(want); err != nil {
		return rep, err
	} else if !intact {
		for _, rs := range want {
			if err := d.fw.ensure(rs.rules, rs.ipv6); err != nil {
				return rep, err
			}
		}
		rep.RulesRestored = true
	}
	level := d.log.Debug
	if rep.changed() {
		level = d.log.Warn
	}
	level("repaired kernel state", "networks", rep.Networks, "published ports", rep.PublishedPorts,
		"stale endpoints", rep.StaleEndpoints, "reattached veths", rep.ReattachedVeths,
		"orphan links", rep.OrphanLinks, "orphan rules", rep.OrphanRules, "rules restored", rep.RulesRestored)
	return rep, nil
}

// holdPorts holds an endpoint's recorded host ports again, unless this
// process already does. A port taken meanwhile is reported, and its rules
// still go in, so the container stays reachable.
func (d *Driver) holdPorts(ep *Endpoint) {
	d.portsMu.Lock()
	defer d.portsMu.Unlock()
	if _, held := d.reserved[ep.ID]; held {
		return
	}
	reqs := make([]portRequest, len(ep.Ports))
	for i, b := range ep.Ports {
		reqs[i] = portRequest{PortBinding: b, HostPortEnd: b.HostPort}
	}
	if _, res, err := reserve(reqs); err != nil {
		d.log.Warn("hold published ports again", "endpoint", short(ep.ID, 12), "err", err)
	} else {
		d.reserved[ep.ID] = res
	}
}

// attachVeth puts a host veth back on its bridge, up and in hairpin mode,
// as it was made: deleting a bridge (a reboot of the bridge, not of the
// host) leaves its ports detached. It reports whether it had to.
func attachVeth(link netlink.Link, bridge string) (bool, error) {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return false, fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	if link.Attrs().MasterIndex == br.Attrs().Index {
		return false, nil
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return false, fmt.Errorf("attach veth %s to bridge %s: %w", name, bridge, err)
	}
	if err := netlink.LinkSetHairpin(link, true); err != nil {
		return false, fmt.Errorf("set hairpin on veth %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return false, fmt.Errorf("set veth %s up: %w", name, err)
	}
	return true, nil
}

// deleteOrphanLinks removes bridges and veths that carry vxbridge's
// prefixes but belong to no record. A bridge named by the user
// (com.docker.network.bridge.name) is only ever touched through its record.
func deleteOrphanLinks(bridges map[string]*Network, veths map[string]bool) (int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	n := 0
	for _, l := range links {
		name := l.Attrs().Name
		var orphan bool
		switch l.(type) {
		case *netlink.Bridge:
			orphan = strings.HasPrefix(name, bridgePrefix) && bridges[name] == nil
		case *netlink.Veth:
			orphan = strings.HasPrefix(name, vethPrefix) && !veths[name]
		}
		if !orphan {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			return n, fmt.Errorf("delete orphan %s %s: %w", l.Type(), name, err)
		}
		n++
	}
	return n, nil
}
