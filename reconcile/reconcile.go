// Package reconcile keeps vxbridge's state honest when dockerd could not
// tell it something: dockerd forgets teardown calls it could not deliver
// (plugin down) and replays nothing. It compares the plugin's records and
// allocations with dockerd's view and removes what dockerd no longer
// holds. It runs in the background, never inside a protocol request, and
// only acts on a complete view of dockerd.
package reconcile

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	netapi "github.com/docker/go-plugins-helpers/network"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/ipam"
)

// Report says what one reconciliation changed.
type Report struct {
	Kernel             driver.Repairs
	ForgottenNetworks  int    // recorded networks dockerd no longer has: deleted
	ForgottenEndpoints int    // recorded endpoints dockerd no longer has: deleted
	LeakedPools        int    // pools no dockerd network uses: released
	LeakedAddresses    int    // addresses no gateway, aux address or container holds: released
	Docker             string // why dockerd's side was skipped, if it was
}

// Driver is what reconciliation needs of the network driver.
type Driver interface {
	Repair() (driver.Repairs, error)
	State() (driver.State, error)
	DeleteNetwork(*netapi.DeleteNetworkRequest) error
	DeleteEndpoint(*netapi.DeleteEndpointRequest) error
}

// Allocator is what reconciliation needs of the IPAM.
type Allocator interface {
	Pools() ([]ipam.Pool, error)
	ReleasePool(*ipamapi.ReleasePoolRequest) error
	ReleaseAddress(*ipamapi.ReleaseAddressRequest) error
}

// Reconciler runs passes one at a time.
type Reconciler struct {
	drv    Driver
	alloc  Allocator
	docker *Docker
	log    *slog.Logger

	mu sync.Mutex
	// suspects remembers when each unowned object was first seen unowned:
	// it is removed only once it stays so for a grace period, so a
	// container or network half way through creation is never taken.
	suspects map[string]time.Time
}

// New returns a reconciler for the driver and allocator, asking dockerd
// through d.
func New(drv Driver, alloc Allocator, d *Docker, log *slog.Logger) *Reconciler {
	return &Reconciler{drv: drv, alloc: alloc, docker: d, log: log, suspects: map[string]time.Time{}}
}

// Run reconciles every interval until ctx ends; objects found unowned are
// removed on the next pass that still finds them so.
func (r *Reconciler) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.Pass(ctx, interval/2)
		}
	}
}

// Now reconciles on demand: one pass marks what is unowned, a second one
// grace later removes what still is.
func (r *Reconciler) Now(ctx context.Context, grace time.Duration) Report {
	first := r.Pass(ctx, grace)
	select {
	case <-ctx.Done():
		return first
	case <-time.After(grace):
	}
	second := r.Pass(ctx, grace)
	second.Kernel = sum(first.Kernel, second.Kernel)
	return second
}

func sum(a, b driver.Repairs) driver.Repairs {
	return driver.Repairs{
		Networks:        b.Networks,
		PublishedPorts:  b.PublishedPorts,
		StaleEndpoints:  a.StaleEndpoints + b.StaleEndpoints,
		ReattachedVeths: a.ReattachedVeths + b.ReattachedVeths,
		OrphanLinks:     a.OrphanLinks + b.OrphanLinks,
		OrphanRules:     a.OrphanRules + b.OrphanRules,
	}
}

// Pass repairs the kernel, then removes what dockerd no longer holds and
// has not held for grace.
func (r *Reconciler) Pass(ctx context.Context, grace time.Duration) Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	var rep Report
	var err error
	if rep.Kernel, err = r.drv.Repair(); err != nil {
		r.log.Error("reconcile: repair kernel state", "err", err)
	}
	nets, err := r.docker.Networks(ctx)
	if err != nil {
		rep.Docker = err.Error()
		r.log.Warn("reconcile: dockerd's view unavailable, nothing removed", "err", err)
		return rep
	}
	now := time.Now()
	seen := map[string]bool{}
	due := func(key string) bool {
		seen[key] = true
		first, ok := r.suspects[key]
		if !ok {
			r.suspects[key], first = now, now
		}
		return now.Sub(first) >= grace
	}
	r.driverPass(nets, due, &rep)
	r.ipamPass(nets, due, &rep)
	for k := range r.suspects {
		if !seen[k] {
			delete(r.suspects, k)
		}
	}
	if rep.ForgottenNetworks+rep.ForgottenEndpoints+rep.LeakedPools+rep.LeakedAddresses > 0 {
		r.log.Warn("reconciled with dockerd", "forgotten networks", rep.ForgottenNetworks, "forgotten endpoints", rep.ForgottenEndpoints,
			"leaked pools", rep.LeakedPools, "leaked addresses", rep.LeakedAddresses)
	}
	return rep
}

// driverPass deletes networks and endpoints that dockerd removed while it
// could not tell the plugin.
func (r *Reconciler) driverPass(nets []Network, due func(string) bool, rep *Report) {
	st, err := r.drv.State()
	if err != nil {
		r.log.Error("reconcile: read driver state", "err", err)
		return
	}
	byID := map[string]Network{}
	for _, n := range nets {
		byID[n.ID] = n
	}
	for _, n := range st.Networks {
		if _, ok := byID[n.ID]; ok || !due("network/"+n.ID) {
			continue
		}
		if err := r.drv.DeleteNetwork(&netapi.DeleteNetworkRequest{NetworkID: n.ID}); err != nil {
			r.log.Error("reconcile: delete forgotten network", "network", n.ID, "err", err)
			continue
		}
		rep.ForgottenNetworks++
	}
	for _, ep := range st.Endpoints {
		dn, ok := byID[ep.NetworkID]
		if !ok || hasEndpoint(dn, ep.ID) || !due("endpoint/"+ep.ID) {
			continue // a network dockerd forgot goes whole, above
		}
		if err := r.drv.DeleteEndpoint(&netapi.DeleteEndpointRequest{NetworkID: ep.NetworkID, EndpointID: ep.ID}); err != nil {
			r.log.Error("reconcile: delete forgotten endpoint", "endpoint", ep.ID, "err", err)
			continue
		}
		rep.ForgottenEndpoints++
	}
}

func hasEndpoint(n Network, id string) bool {
	for _, c := range n.Containers {
		if c.EndpointID == id {
			return true
		}
	}
	return false
}

// ipamPass releases pools no network uses and addresses nobody holds. A
// pool belongs to the dockerd network with that subnet and a plugin IPAM
// (our pools never overlap each other); its rightful addresses are that
// network's gateway, aux addresses and containers' addresses.
func (r *Reconciler) ipamPass(nets []Network, due func(string) bool, rep *Report) {
	pools, err := r.alloc.Pools()
	if err != nil {
		r.log.Error("reconcile: read pools", "err", err)
		return
	}
	owners := map[netip.Prefix]Network{}
	for _, n := range nets {
		if n.IPAM.Driver == "default" || n.IPAM.Driver == "null" {
			continue // Docker's own IPAM: none of our pools is its
		}
		for _, c := range n.IPAM.Config {
			if p, err := netip.ParsePrefix(c.Subnet); err == nil {
				owners[p.Masked()] = n
			}
		}
	}
	for _, p := range pools {
		owner, ok := owners[p.Prefix]
		if !ok {
			if due("pool/" + p.ID()) {
				if err := r.alloc.ReleasePool(&ipamapi.ReleasePoolRequest{PoolID: p.ID()}); err != nil {
					r.log.Error("reconcile: release pool", "pool", p.ID(), "err", err)
					continue
				}
				rep.LeakedPools++
			}
			continue
		}
		held := heldAddresses(owner)
		// dockerd shows the gateway only when the user chose it; the pool
		// remembers the one it handed out.
		held[p.Gateway] = true
		for _, a := range p.Allocated {
			if held[a] || !due("address/"+p.ID()+"/"+a.String()) {
				continue
			}
			if err := r.alloc.ReleaseAddress(&ipamapi.ReleaseAddressRequest{PoolID: p.ID(), Address: a.String()}); err != nil {
				r.log.Error("reconcile: release address", "pool", p.ID(), "address", a, "err", err)
				continue
			}
			rep.LeakedAddresses++
		}
	}
}

func heldAddresses(n Network) map[netip.Addr]bool {
	held := map[netip.Addr]bool{}
	add := func(s string) {
		s, _, _ = strings.Cut(s, "/")
		if a, err := netip.ParseAddr(s); err == nil {
			held[a.Unmap()] = true
		}
	}
	for _, c := range n.IPAM.Config {
		add(c.Gateway)
		for _, a := range c.AuxiliaryAddresses {
			add(a)
		}
	}
	for _, c := range n.Containers {
		add(c.IPv4Address)
		add(c.IPv6Address)
	}
	return held
}
