// Package names lets containers resolve the names of containers on other
// hosts of the overlays they share. Docker's embedded DNS (127.0.0.11)
// answers the names of its own host's containers and forwards every other
// name to the container's upstream servers; on Docker 20.10 it sends that
// query from the container's namespace, so it leaves through the
// container's default route: a vxbridge bridge, where a DNAT brings it to
// the Server here. Where that does not happen (newer Docker, a default
// route through another network, internal overlays), dockerd's `dns`
// setting names the Server's own address. The Server answers the names of
// remote endpoints on the overlays of the asker (by its address), from a
// Table fed by the cluster's watch, and forwards everything else to the
// host's real upstream servers. The names, and every address of the local
// containers on overlays, are learned from dockerd (Learner); the names
// are advertised with each endpoint (cluster.Endpoint.Names).
package names

import (
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vxbridge/vxbridge/cluster"
)

// Table holds the names of remote endpoints, per overlay, and the local
// containers that may ask for them.
type Table struct {
	mu       sync.RWMutex
	overlays []overlayNames
	askers   map[netip.Addr]Asker
}

type overlayNames struct {
	name             string
	subnet4, subnet6 netip.Prefix
	internal         bool
	// addrs by lower-case name (container name or alias).
	addrs map[string][]netip.Addr
}

// Asker is a local container on overlays, known by every address it has:
// a query sent to the resolver's own address leaves through the
// container's default route, which may be another network (Docker's
// bridge, say), and then comes from that network's address.
type Asker struct {
	// Overlays are the names of the overlays the container is on.
	Overlays []string
	// External: the container is on a network that is not internal, so
	// other names may be forwarded for it (as Docker's DNS does).
	External bool
}

// SetAskers replaces the local containers known by address (Learner).
func (t *Table) SetAskers(askers map[netip.Addr]Asker) {
	t.mu.Lock()
	t.askers = askers
	t.mu.Unlock()
}

// Update replaces the table with the names other hosts than host advertise
// (the local ones are Docker's own to answer: never shadow them).
func (t *Table) Update(host string, defs []cluster.Overlay, eps []cluster.Endpoint) {
	byName := map[string]*overlayNames{}
	ovs := make([]overlayNames, 0, len(defs))
	for _, d := range defs {
		ovs = append(ovs, overlayNames{name: d.Name, subnet4: d.Subnet4, subnet6: d.Subnet6, internal: d.Internal, addrs: map[string][]netip.Addr{}})
	}
	for i := range ovs {
		byName[ovs[i].name] = &ovs[i]
	}
	for _, ep := range eps {
		o := byName[ep.Overlay]
		if o == nil || ep.Host == host {
			continue
		}
		for _, n := range ep.Names {
			n = strings.ToLower(n)
			for _, a := range []netip.Addr{ep.IPv4, ep.IPv6} {
				if a.IsValid() && !slices.Contains(o.addrs[n], a) {
					o.addrs[n] = append(o.addrs[n], a)
				}
			}
		}
	}
	for _, o := range ovs {
		for _, as := range o.addrs {
			slices.SortFunc(as, func(a, b netip.Addr) int { return a.Compare(b) })
		}
	}
	t.mu.Lock()
	t.overlays = ovs
	t.mu.Unlock()
}

// Lookup returns the addresses of name (fully qualified, any case) for a
// query from src: name is a container name or alias, alone or followed by
// the overlay's name, of a remote endpoint on an overlay of the asker: the
// overlay whose subnet holds src, or one the local container with address
// src is on. ok is false when the table does not know the name: it is
// someone else's to answer.
func (t *Table) Lookup(src netip.Addr, name string) (addrs []netip.Addr, ok bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	src = src.Unmap()
	t.mu.RLock()
	defer t.mu.RUnlock()
	asker := t.askers[src]
	for _, o := range t.overlays {
		if !o.subnet4.Contains(src) && !o.subnet6.Contains(src) && !slices.Contains(asker.Overlays, o.name) {
			continue
		}
		short := strings.TrimSuffix(name, "."+strings.ToLower(o.name))
		if as, found := o.addrs[short]; found {
			return slices.Clone(as), true
		}
	}
	return nil, false
}

// Forwards reports whether other names than the table's are forwarded
// upstream for a query from src. Not for a container on internal networks
// only, as Docker's own DNS keeps such containers from resolving outside
// names (Docker 25 and later); a container not known yet counts by its
// address: one in an internal overlay's subnet is refused until known.
func (t *Table) Forwards(src netip.Addr) bool {
	src = src.Unmap()
	t.mu.RLock()
	defer t.mu.RUnlock()
	if a, ok := t.askers[src]; ok {
		return a.External
	}
	for _, o := range t.overlays {
		if o.internal && (o.subnet4.Contains(src) || o.subnet6.Contains(src)) {
			return false
		}
	}
	return true
}
