// Package reconcile keeps vxbridge's state honest when dockerd could not
// tell it something: dockerd forgets teardown calls it could not deliver
// (plugin down) and replays nothing. It compares the plugin's records and
// allocations with dockerd's view and removes what dockerd no longer
// holds. It runs in the background, never inside a protocol request, and
// only acts on a complete view of dockerd.
package reconcile

import (
	"context"
	"errors"
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
	AdoptedNetworks    int      // networks dockerd has that the records had lost: recorded again
	AdoptedEndpoints   int      // endpoints likewise (their veth still there)
	AdoptedPools       int      // pools likewise, with the addresses dockerd shows
	ForgottenNetworks  int      // recorded networks dockerd no longer has: deleted
	ForgottenEndpoints int      // recorded endpoints dockerd no longer has: deleted
	LeakedPools        int      // pools no dockerd network uses: released
	LeakedAddresses    int      // addresses no gateway, aux address or container holds: released
	Docker             string   // why dockerd's side was skipped, if it was
	Errors             []string `json:",omitempty"` // what failed, retried on the next pass
}

// Failed reports whether something could not be reconciled: a broken
// network or a failed step.
func (r Report) Failed() bool { return len(r.Kernel.Broken)+len(r.Errors) > 0 }

// Driver is what reconciliation needs of the network driver.
type Driver interface {
	Repair(*driver.Claims) (driver.Repairs, error)
	State() (driver.State, error)
	DeleteNetwork(*netapi.DeleteNetworkRequest) error
	DeleteEndpoint(*netapi.DeleteEndpointRequest) error
	AdoptNetwork(driver.NetworkInfo) (bool, error)
	AdoptEndpoint(networkID, endpointID, mac string, addr4, addr6 netip.Prefix) (bool, error)
}

// Allocator is what reconciliation needs of the IPAM.
type Allocator interface {
	Pools() ([]ipam.Pool, error)
	ReleasePool(*ipamapi.ReleasePoolRequest) error
	ReleaseAddress(*ipamapi.ReleaseAddressRequest) error
	AdoptPool(ipam.Pool) (bool, error)
	BindOverlay(poolID, overlay string) error
}

// Reconciler runs passes one at a time.
type Reconciler struct {
	drv    Driver
	alloc  Allocator
	docker *Docker
	log    *slog.Logger
	// name is the plugin's legacy name (its socket's); managed plugin
	// names are asked of dockerd.
	name string

	mu sync.Mutex
	// suspects remembers when each unowned object was first seen unowned:
	// it is removed only once it stays so for a grace period, so a
	// container or network half way through creation is never taken.
	suspects map[string]time.Time
}

// New returns a reconciler for the driver and allocator, asking dockerd
// through d; name is the plugin's name as a legacy plugin ("" for none).
func New(drv Driver, alloc Allocator, d *Docker, name string, log *slog.Logger) *Reconciler {
	return &Reconciler{drv: drv, alloc: alloc, docker: d, name: name, log: log, suspects: map[string]time.Time{}}
}

// Start brings the kernel and the records in line before the plugin
// serves: no request is in flight, so what dockerd has and the records
// lack is adopted at once. It reports whether dockerd answered; when it
// did not (dockerd starts its plugins before its API), nothing is pruned
// and Run retries soon.
func (r *Reconciler) Start(ctx context.Context) (Report, bool) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	now := time.Now()
	return r.pass(ctx, func(key string) bool {
		if strings.HasPrefix(key, adoptKey) {
			return true
		}
		// Removal waits for a later pass: dockerd may be retrying a call
		// that allocated an address before the restart.
		if _, ok := r.suspects[key]; !ok {
			r.suspects[key] = now
		}
		return false
	})
}

// adoptKey prefixes the suspect keys of adoptions.
const adoptKey = "adopt/"

// startTimeout bounds how long the start waits for dockerd's view.
const startTimeout = 3 * time.Second

// Run reconciles every interval until ctx ends; objects found unowned are
// removed on the next pass that still finds them so. Until dockerd has
// answered once (viewed), it tries every few seconds.
func (r *Reconciler) Run(ctx context.Context, interval time.Duration, viewed bool) {
	for !viewed {
		select {
		case <-ctx.Done():
			return
		case <-time.After(retryInterval):
		}
		_, viewed = r.Start(ctx)
	}
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

const retryInterval = 2 * time.Second

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
	second.AdoptedNetworks += first.AdoptedNetworks
	second.AdoptedEndpoints += first.AdoptedEndpoints
	second.AdoptedPools += first.AdoptedPools
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
		Broken:          b.Broken,
	}
}

// Pass adopts what dockerd has and the records lack, repairs the kernel,
// then removes what dockerd no longer holds; each only once it has stayed
// so for grace.
func (r *Reconciler) Pass(ctx context.Context, grace time.Duration) Report {
	now := time.Now()
	due := func(key string) bool {
		first, ok := r.suspects[key]
		if !ok {
			r.suspects[key], first = now, now
		}
		return now.Sub(first) >= grace
	}
	rep, _ := r.pass(ctx, due)
	return rep
}

func (r *Reconciler) pass(ctx context.Context, due func(string) bool) (Report, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var rep Report
	nets, err := r.view(ctx)
	if err != nil {
		rep.Docker = err.Error()
		r.log.Warn("reconcile: dockerd's view unavailable, nothing adopted or removed", "err", err)
		if rep.Kernel, err = r.drv.Repair(nil); err != nil {
			r.fail(&rep, "repair kernel state", err)
		}
		return rep, false
	}
	seen := map[string]bool{}
	mark := func(key string) bool {
		seen[key] = true
		return due(key)
	}
	r.adoptPass(nets, mark, &rep)
	if rep.Kernel, err = r.drv.Repair(claims(nets)); err != nil {
		r.fail(&rep, "repair kernel state", err)
	}
	r.driverPass(nets, mark, &rep)
	r.ipamPass(nets, mark, &rep)
	for k := range r.suspects {
		if !seen[k] {
			delete(r.suspects, k)
		}
	}
	if rep.ForgottenNetworks+rep.ForgottenEndpoints+rep.LeakedPools+rep.LeakedAddresses > 0 {
		r.log.Warn("reconciled with dockerd", "forgotten networks", rep.ForgottenNetworks, "forgotten endpoints", rep.ForgottenEndpoints,
			"leaked pools", rep.LeakedPools, "leaked addresses", rep.LeakedAddresses)
	}
	return rep, true
}

func (r *Reconciler) fail(rep *Report, what string, err error) {
	r.log.Error("reconcile: "+what, "err", err)
	rep.Errors = append(rep.Errors, what+": "+err.Error())
}

// view is dockerd's networks of this plugin: those whose driver is one of
// its names.
func (r *Reconciler) view(ctx context.Context) ([]Network, error) {
	names := map[string]bool{}
	if r.name != "" {
		names[r.name] = true
	}
	managed, err := r.docker.Plugins(ctx)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	for _, n := range managed {
		names[n] = true
	}
	nets, err := r.docker.Networks(ctx)
	if err != nil {
		return nil, err
	}
	for i := range nets {
		// Mark each network as the plugin's or not, for adoption.
		nets[i].ours = names[nets[i].Driver]
	}
	return nets, nil
}

// claims lists what dockerd holds on the plugin's networks, which Repair
// must not prune even without a record.
func claims(nets []Network) *driver.Claims {
	c := &driver.Claims{Networks: map[string]bool{}, Bridges: map[string]bool{}, Endpoints: map[string]string{}}
	for _, n := range nets {
		if !n.ours {
			continue
		}
		c.Networks[n.ID] = true
		c.Bridges[driver.BridgeName(n.ID, n.Options)] = true
		for _, ct := range n.Containers {
			c.Endpoints[ct.EndpointID] = n.ID
		}
	}
	return c
}

// adoptPass records again what dockerd has on the plugin's networks and
// the records lost: networks, endpoints whose veth is still there, pools.
func (r *Reconciler) adoptPass(nets []Network, due func(string) bool, rep *Report) {
	st, err := r.drv.State()
	if err != nil {
		r.fail(rep, "read driver state", err)
		return
	}
	known := map[string]*driver.Network{}
	for _, n := range st.Networks {
		known[n.ID] = n
	}
	eps := map[string]bool{}
	for _, ep := range st.Endpoints {
		eps[ep.ID] = true
	}
	for _, n := range nets {
		if !n.ours {
			continue
		}
		if known[n.ID] == nil && due(adoptKey+"network/"+n.ID) {
			info := networkInfo(n)
			ok, err := r.drv.AdoptNetwork(info)
			if err != nil {
				r.fail(rep, "adopt network "+n.Name, err)
				continue
			}
			if ok {
				rep.AdoptedNetworks++
			}
		}
		for _, c := range n.Containers {
			if eps[c.EndpointID] || !due(adoptKey+"endpoint/"+c.EndpointID) {
				continue
			}
			ok, err := r.drv.AdoptEndpoint(n.ID, c.EndpointID, c.MacAddress, cidr(c.IPv4Address), cidr(c.IPv6Address))
			if err != nil {
				r.fail(rep, "adopt endpoint of "+c.Name, err)
				continue
			}
			if ok {
				rep.AdoptedEndpoints++
			}
		}
	}
	r.adoptPools(nets, due, rep)
}

// adoptPools records the pools of networks on the plugin's IPAM that the
// store lost. The gateway is dockerd's, else the one the driver's record
// of the network carries.
func (r *Reconciler) adoptPools(nets []Network, due func(string) bool, rep *Report) {
	pools, err := r.alloc.Pools()
	if err != nil {
		r.fail(rep, "read pools", err)
		return
	}
	have := map[netip.Prefix]bool{}
	for _, p := range pools {
		have[p.Prefix] = true
	}
	st, err := r.drv.State()
	if err != nil {
		r.fail(rep, "read driver state", err)
		return
	}
	gateways := map[string][]netip.Prefix{}
	for _, n := range st.Networks {
		gateways[n.ID] = []netip.Prefix{n.Gateway4, n.Gateway6}
	}
	for _, n := range nets {
		if !n.ours || !r.ipamIsOurs(n) {
			continue
		}
		held := heldAddresses(n)
		for _, c := range n.IPAM.Config {
			pfx, err := netip.ParsePrefix(c.Subnet)
			if err != nil || have[pfx.Masked()] || !due(adoptKey+"pool/"+pfx.Masked().String()) {
				continue
			}
			p := ipam.Pool{Space: ipam.LocalSpace, Prefix: pfx.Masked(), V6: pfx.Addr().Is6(), Options: n.IPAM.Options}
			if sub, err := netip.ParsePrefix(c.IPRange); err == nil {
				p.SubPool = sub.Masked()
			}
			p.Gateway = cidr(c.Gateway).Addr()
			for _, gw := range gateways[n.ID] {
				if !p.Gateway.IsValid() && gw.IsValid() && p.Prefix.Contains(gw.Addr()) {
					p.Gateway = gw.Addr()
				}
			}
			for a := range held {
				p.Allocated = append(p.Allocated, a)
			}
			ok, err := r.alloc.AdoptPool(p)
			if err == nil && n.Options[driver.OptOverlay] != "" {
				// Its addresses are the cluster's.
				err = r.alloc.BindOverlay(p.ID(), n.Options[driver.OptOverlay])
			}
			if err != nil {
				r.fail(rep, "adopt pool "+p.ID(), err)
				continue
			}
			if ok {
				rep.AdoptedPools++
			}
		}
	}
}

// ipamIsOurs: the network's IPAM is this plugin (same name as its driver,
// as `--ipam-driver vxbridge:latest` gives).
func (r *Reconciler) ipamIsOurs(n Network) bool {
	return n.IPAM.Driver == n.Driver
}

// networkInfo is dockerd's view of a network in the driver's terms.
func networkInfo(n Network) driver.NetworkInfo {
	info := driver.NetworkInfo{ID: n.ID, Options: n.Options, Internal: n.Internal, IPv6: n.EnableIPv6}
	for _, c := range n.IPAM.Config {
		pfx, err := netip.ParsePrefix(c.Subnet)
		if err != nil {
			continue
		}
		gw := cidr(c.Gateway).Addr()
		if pfx.Addr().Is4() {
			info.Subnet4, info.Gateway4 = pfx, gw
		} else {
			info.Subnet6, info.Gateway6 = pfx, gw
		}
	}
	return info
}

// cidr reads an address dockerd shows, with or without a prefix length
// (its gateways come bare, its container addresses in CIDR form).
func cidr(s string) netip.Prefix {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen())
	}
	return netip.Prefix{}
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
