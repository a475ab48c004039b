package names

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vxbridge/vxbridge/cluster"
	"github.com/vxbridge/vxbridge/reconcile"
)

// Docker is what the Learner asks dockerd (reconcile.Docker).
type Docker interface {
	Network(ctx context.Context, id string) (reconcile.Network, error)
	Container(ctx context.Context, id string) (reconcile.Container, error)
	Events(ctx context.Context, filters map[string][]string, ready func(), fn func(reconcile.Event)) error
}

// Node is this host's membership in the cluster (cluster.Node).
type Node interface {
	LocalEndpoints() []cluster.Endpoint
	SetNames(ctx context.Context, endpointID string, names []string) error
}

// Learner finds the names of this host's overlay endpoints' containers in
// dockerd and advertises them, and gives the Table those containers'
// addresses. A remote driver never hears names, and
// dockerd waits on every driver call, so it asks afterwards: when dockerd
// reports a container connected to a network (or renamed), and every
// couple of seconds for endpoints still without names.
type Learner struct {
	Docker Docker
	Node   Node
	// Networks maps this host's overlay endpoints to their dockerd
	// network IDs (the driver's records).
	Networks func() (map[string]string, error)
	Log      *slog.Logger
	// Table, when set, gets every address of the local containers on
	// overlays (Table.SetAskers).
	Table *Table

	renamed atomic.Bool // a container was renamed: learn every name again
	// moved: a container on an overlay was connected to or disconnected
	// from another network, or a container to or from an overlay: find
	// the askers again.
	moved atomic.Bool
	// found is what the askers were last found from (read by the events'
	// goroutine).
	found atomic.Pointer[found]
	// endpoints are the local endpoints the askers were found for (only
	// Run's goroutine reads and writes it).
	endpoints string
}

// Run learns names until ctx ends.
func (l *Learner) Run(ctx context.Context) {
	// Names kept from before a restart may have changed meanwhile: check
	// them all once.
	l.renamed.Store(true)
	l.moved.Store(true)
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	go func() {
		// Any network's connect and disconnect: the addresses of a
		// container on an overlay on Docker's own networks count too (Asker).
		filters := map[string][]string{"type": {"network", "container"}, "event": {"connect", "disconnect", "rename"}}
		for ctx.Err() == nil {
			err := l.Docker.Events(ctx, filters, poke, func(e reconcile.Event) {
				l.notice(e)
				poke()
			})
			if ctx.Err() == nil {
				l.Log.Debug("dockerd's events (asking again)", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(2 * time.Second):
				}
			}
		}
	}()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-tick.C:
		}
		if err := l.learn(ctx); err != nil && ctx.Err() == nil {
			l.Log.Warn("learn container names", "err", err)
		}
	}
}

// found: the containers on this host's overlays and those overlays'
// dockerd network IDs, when the askers were last found.
type found struct{ containers, networks map[string]bool }

// notice marks what a network or container event changes.
func (l *Learner) notice(e reconcile.Event) {
	if e.Action == "rename" {
		l.renamed.Store(true)
	}
	// A pass made between an endpoint's CreateEndpoint and dockerd
	// attaching its container found the endpoint but not the container;
	// dockerd reports the connect once the container is attached.
	if f := l.found.Load(); f != nil && (f.containers[e.Actor.Attributes["container"]] ||
		e.Type == "network" && f.networks[e.Actor.ID]) {
		l.moved.Store(true)
	}
}

// learn advertises the names of the endpoints that have none yet (all of
// them after a rename), and finds the askers again when containers moved
// or the local endpoints changed.
func (l *Learner) learn(ctx context.Context) error {
	all := l.renamed.Swap(false)
	missing := map[string]bool{}
	known := map[string][]string{}
	local := l.Node.LocalEndpoints()
	ids := make([]string, 0, len(local))
	for _, ep := range local {
		ids = append(ids, ep.ID)
		if all || ep.Names == nil {
			missing[ep.ID] = true
			known[ep.ID] = ep.Names
		}
	}
	slices.Sort(ids)
	endpoints := strings.Join(ids, ",")
	askers := l.Table != nil && (l.moved.Swap(false) || endpoints != l.endpoints)
	if len(missing) == 0 && !askers {
		return nil
	}
	nets, err := l.Networks()
	if err != nil {
		if askers {
			l.moved.Store(true)
		}
		return err
	}
	byNetwork := map[string]bool{}
	for _, ep := range local {
		if nid, ok := nets[ep.ID]; ok && (askers || missing[ep.ID]) {
			byNetwork[nid] = true
		}
	}
	var errs []error
	networks := map[string]reconcile.Network{}     // by ID, as asked
	containers := map[string]reconcile.Container{} // on overlays, by ID
	for nid := range byNetwork {
		n, err := l.Docker.Network(ctx, nid)
		if errors.Is(err, reconcile.ErrNotFound) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		networks[nid] = n
		for cid, c := range n.Containers {
			if !missing[c.EndpointID] && !askers {
				continue
			}
			ct, ok := containers[cid]
			if !ok {
				ct, err = l.Docker.Container(ctx, cid)
				if errors.Is(err, reconcile.ErrNotFound) {
					continue
				}
				if err != nil {
					errs = append(errs, err)
					continue
				}
				containers[cid] = ct
			}
			if !missing[c.EndpointID] {
				continue
			}
			names := containerNames(ct, n.Name)
			if slices.Equal(names, known[c.EndpointID]) {
				continue
			}
			if err := l.Node.SetNames(ctx, c.EndpointID, names); err != nil {
				errs = append(errs, err)
				continue
			}
			l.Log.Debug("names advertised", "endpoint", c.EndpointID[:min(12, len(c.EndpointID))], "names", names)
		}
	}
	if askers {
		if err := l.findAskers(ctx, byNetwork, networks, containers); err != nil {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			l.moved.Store(true) // try again
		} else {
			l.endpoints = endpoints
		}
	}
	if len(errs) > 0 && all {
		l.renamed.Store(true) // try the whole pass again
	}
	return errors.Join(errs...)
}

// findAskers gives the Table every address of the containers on this
// host's overlays (the IDs in overlays), with the overlays each is on and
// whether it has a network that is not internal.
func (l *Learner) findAskers(ctx context.Context, overlays map[string]bool, networks map[string]reconcile.Network,
	containers map[string]reconcile.Container) error {
	askers := map[netip.Addr]Asker{}
	ids := make(map[string]bool, len(containers))
	for id, ct := range containers {
		ids[id] = true
		var a Asker
		var addrs []netip.Addr
		for name, cn := range ct.NetworkSettings.Networks {
			if overlays[cn.NetworkID] {
				a.Overlays = append(a.Overlays, name)
			}
			n, ok := networks[cn.NetworkID]
			if !ok {
				var err error
				n, err = l.Docker.Network(ctx, cn.NetworkID)
				if errors.Is(err, reconcile.ErrNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				networks[cn.NetworkID] = n
			}
			a.External = a.External || !n.Internal
			for _, s := range []string{cn.IPAddress, cn.GlobalIPv6Address} {
				if ip, err := netip.ParseAddr(s); err == nil {
					addrs = append(addrs, ip)
				}
			}
		}
		slices.Sort(a.Overlays)
		for _, ip := range addrs {
			askers[ip] = a
		}
	}
	l.Table.SetAskers(askers)
	l.found.Store(&found{containers: ids, networks: overlays})
	return nil
}

// containerNames is the container's name and its aliases on the network,
// each once: what Docker's DNS answers for it on that network.
func containerNames(c reconcile.Container, network string) []string {
	names := []string{strings.TrimPrefix(c.Name, "/")}
	for _, a := range c.NetworkSettings.Networks[network].Aliases {
		if a != "" && !slices.Contains(names, a) {
			names = append(names, a)
		}
	}
	return names
}
