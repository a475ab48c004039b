package driver

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/vxbridge/vxbridge/kernel"
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
	// Broken lists the networks that could not be repaired, with why;
	// they are left as they are and tried again on the next pass.
	Broken []Problem `json:",omitempty"`
}

// Problem is one network Repair could not bring in line.
type Problem struct {
	Network string
	Err     string
}

func (r Repairs) changed() bool {
	return r.RulesRestored || r.StaleEndpoints+r.ReattachedVeths+r.OrphanLinks+r.OrphanRules > 0
}

// Claims is what dockerd holds of the plugin's: network IDs, bridge names
// and endpoint IDs (mapped to their network's). Repair never prunes what
// dockerd claims, record or not.
type Claims struct {
	Networks, Bridges map[string]bool
	Endpoints         map[string]string
}

// Repair makes the kernel match the records, both ways: it re-creates
// what a record says should exist (chains, bridges, rules, published
// ports, veths on their bridge) and, given dockerd's claims, deletes what
// vxbridge made that neither a record nor dockerd owns. Without claims
// (dockerd could not be asked) it deletes nothing: with a lost state file
// every object would look orphaned. A network that cannot be
// repaired is reported in Broken and left alone (its bridge, veths and
// rules are kept), so it never stops the repair of the others.
//
// The slow part, listing every link and every rule of vxbridge's chains
// (dozens of iptables runs: requests were seen waiting 0.65 s under load),
// runs before the driver's write lock. Every decision is taken under the
// lock, against the records as they are then, so no request is half way
// while it decides: an object a request made after the listing is owned by
// its record by then, and one listed but gone since is skipped.
func (d *Driver) Repair(claims *Claims) (Repairs, error) {
	var rep Repairs
	// The chains and fixed rules belong to no record: checking them (two
	// dozen iptables runs) needs no lock either.
	if err := d.fw.setup(); err != nil {
		return rep, err
	}
	listed, err := d.fw.list()
	if err != nil {
		return rep, err
	}
	var links []netlink.Link
	if claims != nil {
		// A dump interrupted by a request's change still serves: every
		// orphan is looked up again under the lock, and one it missed
		// waits for the next pass.
		if links, err = netlink.LinkList(); err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return rep, fmt.Errorf("list links: %w", err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	nets, err := loadAll[Network](d.store, networkKeys)
	if err != nil {
		return rep, fmt.Errorf("load networks: %w", err)
	}
	eps, err := loadAll[Endpoint](d.store, endpointKeys)
	if err != nil {
		return rep, fmt.Errorf("load endpoints: %w", err)
	}
	broken := map[string]string{}
	fail := func(n *Network, err error) {
		if _, seen := broken[n.ID]; !seen {
			broken[n.ID] = err.Error()
			rep.Broken = append(rep.Broken, Problem{Network: n.ID, Err: err.Error()})
		}
	}
	byID := map[string]*Network{}
	owned := owned{bridges: map[string]bool{}, veths: map[string]bool{}, tags: map[string]bool{}}
	var want []ruleSet
	wantTags := map[string]bool{}
	for _, n := range nets {
		byID[n.ID] = n
		// A broken network keeps what it has: its names stay owned.
		owned.bridges[n.Options.Bridge] = true
		owned.tags[short(n.ID, 12)] = true
		if err := ensureBridge(n); err != nil {
			fail(n, err)
			continue
		}
		if n.VNI != 0 {
			if err := d.ensureDevice(n); err != nil {
				fail(n, fmt.Errorf("overlay %s: %w", n.Options.Overlay, err))
				continue
			}
		}
		want = append(want, ruleSet{networkRules(n), n.Options.IPv6})
		wantTags[short(n.ID, 12)] = true
		rep.Networks++
	}
	for _, ep := range eps {
		n := byID[ep.NetworkID]
		if n != nil {
			owned.veths[ep.HostIf] = true
			if len(ep.Ports) > 0 {
				owned.tags[short(n.ID, 12)+":"+short(ep.ID, 12)] = true
			}
			if broken[n.ID] != "" {
				continue
			}
		}
		link, lerr := netlink.LinkByName(ep.HostIf)
		if n == nil || lerr != nil {
			// A veth dies with its container's namespace: the container
			// went while dockerd could not tell us. An endpoint outliving
			// its network's record is stale too.
			if err := d.teardownEndpoint(ep); err != nil {
				return rep, err
			}
			delete(owned.veths, ep.HostIf)
			rep.StaleEndpoints++
			continue
		}
		if reattached, err := attachVeth(link, n.Options.Bridge); err != nil {
			fail(n, err)
			continue
		} else if reattached {
			rep.ReattachedVeths++
		}
		if len(ep.Ports) > 0 {
			d.holdPorts(ep)
			want = append(want, ruleSet{endpointPortRules(n, ep), false})
			wantTags[short(n.ID, 12)+":"+short(ep.ID, 12)] = true
			rep.PublishedPorts += len(ep.Ports)
		}
	}
	if claims != nil {
		for id := range claims.Networks {
			owned.tags[short(id, 12)] = true
		}
		for id := range claims.Bridges {
			owned.bridges[id] = true
		}
		for id, nid := range claims.Endpoints {
			owned.veths[vethName(id)] = true
			owned.tags[short(nid, 12)+":"+short(id, 12)] = true
		}
		if rep.OrphanLinks, err = deleteOrphanLinks(links, owned); err != nil {
			return rep, err
		}
		if rep.OrphanRules, err = d.fw.removeOrphans(listed, owned.tags); err != nil {
			return rep, err
		}
	}
	// Re-asserting every rule costs an iptables run each; counting the
	// chains' rules of the wanted tags first makes the periodic pass cheap
	// (rules of broken networks, or orphans kept unpruned, do not count).
	intact := d.fw.intact(listed, want, wantTags)
	if !intact {
		// A request may have changed the chains since they were listed:
		// only a listing no request can race tells a lost rule.
		if listed, err = d.fw.list(); err != nil {
			return rep, err
		}
		intact = d.fw.intact(listed, want, wantTags)
	}
	if !intact {
		for _, n := range nets {
			if broken[n.ID] == "" {
				if err := d.fw.remove(legacyRules(n), n.Options.IPv6); err != nil {
					return rep, err
				}
			}
		}
		for _, rs := range want {
			if err := d.fw.ensure(rs.rules, rs.ipv6); err != nil {
				return rep, err
			}
		}
		rep.RulesRestored = true
	}
	d.broken = broken
	level := d.log.Debug
	if rep.changed() {
		level = d.log.Warn
	}
	level("repaired kernel state", "networks", rep.Networks, "published ports", rep.PublishedPorts,
		"stale endpoints", rep.StaleEndpoints, "reattached veths", rep.ReattachedVeths,
		"orphan links", rep.OrphanLinks, "orphan rules", rep.OrphanRules, "rules restored", rep.RulesRestored, "pruned", claims != nil)
	for _, p := range rep.Broken {
		d.log.Warn("network cannot be repaired; left as it is and retried on the next pass", "network", short(p.Network, 12), "err", p.Err)
	}
	return rep, nil
}

// owned is what the records own in the kernel: bridge and veth names, and
// rule tags.
type owned struct {
	bridges, veths, tags map[string]bool
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

// deleteOrphanLinks removes the listed bridges and veths that carry
// vxbridge's prefixes but belong to no record. A bridge named by the user
// (com.docker.network.bridge.name) is only ever touched through its record.
// The listing may be older than o: each orphan is looked up again by name,
// and one gone since is skipped.
func deleteOrphanLinks(links []netlink.Link, o owned) (int, error) {
	n := 0
	for _, l := range links {
		if !o.orphan(l) {
			continue
		}
		name := l.Attrs().Name
		l, err := netlink.LinkByName(name)
		if kernel.LinkNotFound(err) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("look up orphan %s: %w", name, err)
		}
		if !o.orphan(l) {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !kernel.LinkNotFound(err) {
			return n, fmt.Errorf("delete orphan %s %s: %w", l.Type(), name, err)
		}
		n++
	}
	return n, nil
}

// orphan reports whether l is a bridge or veth of vxbridge's that o does
// not own.
func (o owned) orphan(l netlink.Link) bool {
	name := l.Attrs().Name
	switch l.(type) {
	case *netlink.Bridge:
		return strings.HasPrefix(name, bridgePrefix) && !o.bridges[name]
	case *netlink.Veth:
		return strings.HasPrefix(name, vethPrefix) && !o.veths[name]
	}
	return false
}
