package names

import (
	"context"
	"errors"
	"log/slog"
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
// dockerd and advertises them. A remote driver never hears names, and
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

	renamed atomic.Bool // a container was renamed: learn every name again
}

// Run learns names until ctx ends.
func (l *Learner) Run(ctx context.Context) {
	// Names kept from before a restart may have changed meanwhile: check
	// them all once.
	l.renamed.Store(true)
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	go func() {
		filters := map[string][]string{"type": {"network", "container"}, "event": {"connect", "rename"}}
		for ctx.Err() == nil {
			err := l.Docker.Events(ctx, filters, poke, func(e reconcile.Event) {
				if e.Action == "rename" {
					l.renamed.Store(true)
				}
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

// learn advertises the names of the endpoints that have none yet (all of
// them after a rename).
func (l *Learner) learn(ctx context.Context) error {
	all := l.renamed.Swap(false)
	missing := map[string]bool{}
	known := map[string][]string{}
	for _, ep := range l.Node.LocalEndpoints() {
		if all || ep.Names == nil {
			missing[ep.ID] = true
			known[ep.ID] = ep.Names
		}
	}
	if len(missing) == 0 {
		return nil
	}
	nets, err := l.Networks()
	if err != nil {
		return err
	}
	byNetwork := map[string]bool{}
	for id := range missing {
		if nid, ok := nets[id]; ok {
			byNetwork[nid] = true
		}
	}
	var errs []error
	for nid := range byNetwork {
		n, err := l.Docker.Network(ctx, nid)
		if errors.Is(err, reconcile.ErrNotFound) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for cid, c := range n.Containers {
			if !missing[c.EndpointID] {
				continue
			}
			ct, err := l.Docker.Container(ctx, cid)
			if errors.Is(err, reconcile.ErrNotFound) {
				continue
			}
			if err != nil {
				errs = append(errs, err)
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
	if len(errs) > 0 && all {
		l.renamed.Store(true) // try the whole pass again
	}
	return errors.Join(errs...)
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
