package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vxbridge/vxbridge/cluster"
	"github.com/vxbridge/vxbridge/overlay"
)

// ListEntry is one network as `vxbridge ls` shows it.
type ListEntry struct {
	ID       string
	Overlay  string `json:",omitempty"` // "" for a network of this host only
	Bridge   string
	Subnet4  netip.Prefix `json:",omitempty"`
	Gateway4 netip.Addr   `json:",omitempty"`
	Subnet6  netip.Prefix `json:",omitempty"`
	Gateway6 netip.Addr   `json:",omitempty"`
	VNI      uint32       `json:",omitempty"`
	MTU      int
	Internal bool
	// Endpoints on this host; for an overlay, ClusterEndpoints counts every
	// host's (-1: the cluster could not be asked).
	Endpoints        int
	ClusterEndpoints int    `json:",omitempty"`
	Broken           string `json:",omitempty"`
}

// List returns every network with its endpoint counts.
func (d *Driver) List() ([]ListEntry, error) {
	st, err := d.State()
	if err != nil {
		return nil, err
	}
	var clusterEps []cluster.Endpoint
	var clusterErr error
	if slices.ContainsFunc(st.Networks, func(n *Network) bool { return n.VNI != 0 }) {
		d.mu.RLock()
		c := d.cluster
		d.mu.RUnlock()
		clusterErr = errNoCluster
		if c != nil {
			clusterEps, clusterErr = c.Endpoints("")
		}
	}
	var out []ListEntry
	for _, n := range st.Networks {
		e := ListEntry{ID: n.ID, Overlay: n.Options.Overlay, Bridge: n.Options.Bridge, VNI: n.VNI, MTU: n.Options.MTU, Internal: n.Options.Internal,
			Subnet4: n.Gateway4.Masked(), Gateway4: n.Gateway4.Addr(), Subnet6: n.Gateway6.Masked(), Gateway6: n.Gateway6.Addr()}
		for _, ep := range st.Endpoints {
			if ep.NetworkID == n.ID {
				e.Endpoints++
			}
		}
		if n.VNI != 0 {
			e.ClusterEndpoints = -1
			if clusterErr == nil {
				e.ClusterEndpoints = 0
				for _, ep := range clusterEps {
					if ep.Overlay == n.Options.Overlay {
						e.ClusterEndpoints++
					}
				}
			}
		}
		for _, p := range st.Broken {
			if p.Network == n.ID {
				e.Broken = p.Err
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// PeerStatus is one cluster member as `vxbridge peers` shows it.
type PeerStatus struct {
	Host string
	VTEP netip.Addr
	Self bool
	// Endpoints the host advertises, per overlay.
	Endpoints map[string]int `json:",omitempty"`
	// Entries this host lacks (Missing) or holds but should not (Stale)
	// for the host's endpoints, over every overlay here.
	Missing  []string `json:",omitempty"`
	Stale    []string `json:",omitempty"`
	Complete bool
}

// ErrNoCluster says the host runs without Consul (no overlays).
var ErrNoCluster = errNoCluster

// Peers returns every live member of the cluster, and whether this host's
// FDB and neighbour entries for its endpoints are complete.
func (d *Driver) Peers(ctx context.Context) ([]PeerStatus, error) {
	d.mu.RLock()
	c, dp := d.cluster, d.datapath
	d.mu.RUnlock()
	if c == nil || dp == nil {
		return nil, errNoCluster
	}
	hosts, err := c.Hosts()
	if err != nil {
		return nil, err
	}
	eps, err := c.Endpoints("")
	if err != nil {
		return nil, err
	}
	st, err := d.State()
	if err != nil {
		return nil, err
	}
	// Whose entry is it: an FDB entry by its VTEP, a neighbour entry by
	// the MAC of the endpoint it points to.
	hostOfMAC := map[string]string{}
	hostOfVTEP := map[netip.Addr]string{}
	for _, h := range hosts {
		hostOfVTEP[h.VTEP] = h.Name
	}
	out := make([]PeerStatus, len(hosts))
	index := map[string]int{}
	for i, h := range hosts {
		out[i] = PeerStatus{Host: h.Name, VTEP: h.VTEP, Self: h.Name == c.Host(), Endpoints: map[string]int{}}
		index[h.Name] = i
	}
	for _, ep := range eps {
		hostOfMAC[ep.MAC] = ep.Host
		if i, ok := index[ep.Host]; ok {
			out[i].Endpoints[ep.Overlay]++
		}
	}
	owner := func(e overlay.Entry) (int, bool) {
		h := hostOfMAC[e.MAC.String()]
		if e.Kind == overlay.FDB {
			h = hostOfVTEP[e.IP]
		}
		i, ok := index[h]
		return i, ok
	}
	for _, n := range st.Networks {
		if n.VNI == 0 {
			continue
		}
		s, err := dp.Status(ctx, n.VNI)
		if err != nil {
			return nil, fmt.Errorf("overlay %s: %w", n.Options.Overlay, err)
		}
		for _, e := range s.Missing {
			if i, ok := owner(e); ok {
				out[i].Missing = append(out[i].Missing, n.Options.Overlay+": "+e.String())
			}
		}
		for _, e := range s.Stale {
			if i, ok := owner(e); ok {
				out[i].Stale = append(out[i].Stale, n.Options.Overlay+": "+e.String())
			}
		}
	}
	for i := range out {
		out[i].Complete = len(out[i].Missing) == 0 && len(out[i].Stale) == 0
	}
	return out, nil
}

// ForgetHost releases the address blocks a dead host held on every
// overlay, so its addresses can be handed out again. It refuses this host
// and a host that is alive (its session still holds its key).
func (d *Driver) ForgetHost(name string) (int, error) {
	d.mu.RLock()
	c, pools := d.cluster, d.pools
	d.mu.RUnlock()
	if c == nil || pools == nil {
		return 0, errNoCluster
	}
	if name == "" {
		return 0, errors.New("no host named")
	}
	if name == c.Host() {
		return 0, fmt.Errorf("%s is this host: its blocks go with its networks (docker network rm)", name)
	}
	hosts, err := c.Hosts()
	if err != nil {
		return 0, err
	}
	if slices.ContainsFunc(hosts, func(h cluster.Host) bool { return h.Name == name }) {
		return 0, fmt.Errorf("host %s is alive (it holds a session in Consul): stop its plugin, or wait for its session to expire, first", name)
	}
	n, err := pools.ReleaseHostBlocks("", name)
	if err != nil {
		return n, err
	}
	d.log.Warn("forgot host: its address blocks are free again", "host", name, "blocks", n)
	return n, nil
}
