// Package ipam is vxbridge's IPAM driver: it carves pools out of default
// blocks (or takes the user's --subnet), hands out addresses serially like
// Docker's built-in IPAM, and keeps every pool and allocation in a
// store.Store so state survives plugin restarts.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/vxbridge/vxbridge/store"
)

// Address space names reported to dockerd.
const (
	LocalSpace  = "vxlocal"
	GlobalSpace = "vxglobal"
)

// Pool option keys (docker network create --ipam-opt KEY=VALUE).
const (
	// OptHostOverlap = "allow" lets an explicit --subnet overlap a prefix in
	// use on this host (a route or an interface address).
	OptHostOverlap = "vxbridge.host-overlap"
)

// Keys dockerd sets in RequestAddress options.
const (
	optRequestAddressType = "RequestAddressType"
	requestTypeGateway    = "com.docker.network.gateway"
)

// Config configures an Allocator.
type Config struct {
	// Spaces maps an address-space name to the store that holds it. The
	// plugin passes LocalSpace -> local bbolt store and GlobalSpace -> (for
	// now the same) store.
	Spaces map[string]store.Store
	// DefaultV4 / DefaultV6: where automatic pools are carved from, in
	// order. Empty means Docker-like defaults.
	DefaultV4, DefaultV6 []DefaultPool
	// HostPrefixes returns the prefixes in use on this host (routes and
	// interface addresses, default routes excluded). Automatic pools never
	// overlap them; an explicit pool that does is refused unless
	// OptHostOverlap is "allow". May be nil (= none).
	HostPrefixes func() ([]netip.Prefix, error)
	// Cluster is the store shared by every host, where pools bound to an
	// overlay (BindOverlay) claim their address blocks; nil means this
	// host has no overlays.
	Cluster store.Store
	// Host is this host's name, unique in the cluster: it marks the
	// blocks this host holds. Required with Cluster.
	Host string
}

// Allocator implements the IpamDriver protocol on top of store.Store.
type Allocator struct {
	spaces       map[string]store.Store
	spaceNames   []string // sorted, for a stable Pools order
	defaultV4    []DefaultPool
	defaultV6    []DefaultPool
	hostPrefixes func() ([]netip.Prefix, error)
	cluster      store.Store
	host         string

	// poolMu makes "check overlaps, then persist" atomic within this
	// process. Address allocation needs no lock: it is one store.Update.
	poolMu sync.Mutex
	// claimMu lets one request at a time claim or release blocks of
	// overlay pools in the cluster store.
	claimMu sync.Mutex
	// conflicts are the last CheckBlocks' (for `vxbridge state`).
	conflictsMu sync.Mutex
	conflicts   []BlockConflict
}

var _ api.Ipam = (*Allocator)(nil)

// errNoChange aborts a store.Update without writing: used for idempotent
// releases so that a repeated call does not rewrite (or create) anything.
var errNoChange = errors.New("no change")

// errBound aborts a local allocation from a pool bound to an overlay: its
// addresses come from blocks (requestOverlayAddress).
var errBound = errors.New("pool is bound to an overlay")

// errPoolExists aborts the creation of a pool whose key is taken, which can
// only happen when another host (shared store) created it concurrently.
var errPoolExists = errors.New("pool already exists")

// New checks cfg and fills in the default pools.
func New(cfg Config) (*Allocator, error) {
	for _, name := range []string{LocalSpace, GlobalSpace} {
		if cfg.Spaces[name] == nil {
			return nil, fmt.Errorf("address space %q has no store", name)
		}
	}
	a := &Allocator{
		spaces:       make(map[string]store.Store, len(cfg.Spaces)),
		defaultV4:    slices.Clone(cfg.DefaultV4),
		defaultV6:    slices.Clone(cfg.DefaultV6),
		hostPrefixes: cfg.HostPrefixes,
		cluster:      cfg.Cluster,
		host:         cfg.Host,
	}
	if cfg.Cluster != nil {
		if err := checkName("host", cfg.Host); err != nil {
			return nil, fmt.Errorf("a cluster store needs this host's name: %w", err)
		}
	}
	for name, st := range cfg.Spaces {
		// The name is the first element of PoolIDs and store keys.
		if name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("invalid address space name %q", name)
		}
		if st == nil {
			return nil, fmt.Errorf("address space %q has no store", name)
		}
		a.spaces[name] = st
		a.spaceNames = append(a.spaceNames, name)
	}
	slices.Sort(a.spaceNames)
	if len(a.defaultV4) == 0 {
		a.defaultV4 = slices.Clone(defaultV4)
	}
	if len(a.defaultV6) == 0 {
		a.defaultV6 = slices.Clone(defaultV6)
	}
	if err := checkDefaults(a.defaultV4, false); err != nil {
		return nil, err
	}
	if err := checkDefaults(a.defaultV6, true); err != nil {
		return nil, err
	}
	return a, nil
}

// GetCapabilities implements api.Ipam.
func (a *Allocator) GetCapabilities() (*api.CapabilitiesResponse, error) {
	return &api.CapabilitiesResponse{RequiresMACAddress: false}, nil
}

// GetDefaultAddressSpaces implements api.Ipam.
func (a *Allocator) GetDefaultAddressSpaces() (*api.AddressSpacesResponse, error) {
	return &api.AddressSpacesResponse{
		LocalDefaultAddressSpace:  LocalSpace,
		GlobalDefaultAddressSpace: GlobalSpace,
	}, nil
}

func (a *Allocator) space(name string) (store.Store, error) {
	st, ok := a.spaces[name]
	if !ok {
		return nil, fmt.Errorf("unknown address space %q", name)
	}
	return st, nil
}

// RequestPool implements api.Ipam.
func (a *Allocator) RequestPool(req *api.RequestPoolRequest) (*api.RequestPoolResponse, error) {
	st, err := a.space(req.AddressSpace)
	if err != nil {
		return nil, err
	}
	allowHost, err := poolOptions(req.Options)
	if err != nil {
		return nil, err
	}
	rec := &Pool{Space: req.AddressSpace, V6: req.V6, Options: cloneOptions(req.Options)}

	explicit := req.Pool != ""
	if explicit {
		if rec.Prefix, err = parsePrefix("pool", req.Pool); err != nil {
			return nil, err
		}
		if rec.Prefix.Addr().Is6() != req.V6 {
			return nil, fmt.Errorf("pool %s is not an %s pool", rec.Prefix, family(req.V6))
		}
		// dockerd would create the network, and every container on it
		// would then fail: refuse at once, saying what fits.
		if longest := longestPool(req.V6); rec.Prefix.Bits() > longest {
			return nil, fmt.Errorf("pool %s is too small: a network needs a gateway and at least one container address, so an %s pool must be /%d or larger", rec.Prefix, family(req.V6), longest)
		}
	}
	if req.SubPool != "" {
		if !explicit {
			return nil, fmt.Errorf("subpool %q needs an explicit pool", req.SubPool)
		}
		if rec.SubPool, err = parsePrefix("subpool", req.SubPool); err != nil {
			return nil, err
		}
		if rec.SubPool.Bits() < rec.Prefix.Bits() || !rec.Prefix.Contains(rec.SubPool.Addr()) {
			return nil, fmt.Errorf("subpool %s is not inside pool %s", rec.SubPool, rec.Prefix)
		}
	}

	// Asked outside the lock: listing routes may be slow.
	var host []netip.Prefix
	if !explicit || !allowHost {
		if host, err = a.listHostPrefixes(); err != nil {
			return nil, err
		}
	}

	a.poolMu.Lock()
	defer a.poolMu.Unlock()
	existing, err := a.poolPrefixes()
	if err != nil {
		return nil, err
	}
	if explicit {
		// Our own pools first: their bridges' routes are host routes too,
		// and "already in use" is the clearer answer.
		if e, hit := overlapping(rec.Prefix, existing); hit {
			return nil, fmt.Errorf("pool %s overlaps pool %s already in use", rec.Prefix, e)
		}
		if h, hit := overlapping(rec.Prefix, host); hit {
			return nil, fmt.Errorf("pool %s overlaps %s in use on this host (set --ipam-opt %s=allow to use it anyway)", rec.Prefix, h, OptHostOverlap)
		}
		if err := a.createPool(st, rec); err != nil {
			return nil, err
		}
	} else {
		defaults := a.defaultV4
		if req.V6 {
			defaults = a.defaultV6
		}
		used := append(existing, host...)
		for {
			pfx, ok := firstFree(defaults, used)
			if !ok {
				return nil, fmt.Errorf("no free %s pool left in the default pools (%s): pass an explicit --subnet", family(req.V6), describeDefaults(defaults))
			}
			rec.Prefix = pfx
			err := a.createPool(st, rec)
			if errors.Is(err, errPoolExists) {
				used = append(used, pfx) // taken meanwhile by another host: try the next
				continue
			}
			if err != nil {
				return nil, err
			}
			break
		}
	}
	return &api.RequestPoolResponse{PoolID: rec.ID(), Pool: rec.Prefix.String()}, nil
}

// poolOptions validates pool options and reports whether host overlap is
// allowed. Unknown keys are refused so a typo does not silently do nothing.
func poolOptions(opts map[string]string) (allowHost bool, err error) {
	for k, v := range opts {
		switch k {
		case OptHostOverlap:
			switch v {
			case "allow":
				allowHost = true
			case "", "deny":
			default:
				return false, fmt.Errorf("invalid value %q for pool option %s: want allow or deny", v, k)
			}
		default:
			return false, fmt.Errorf("unknown pool option %q", k)
		}
	}
	return allowHost, nil
}

func cloneOptions(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (a *Allocator) listHostPrefixes() ([]netip.Prefix, error) {
	if a.hostPrefixes == nil {
		return nil, nil
	}
	list, err := a.hostPrefixes()
	if err != nil {
		return nil, fmt.Errorf("list prefixes in use on this host: %w", err)
	}
	out := make([]netip.Prefix, 0, len(list))
	for _, p := range list {
		// A default route would overlap everything and block every pool;
		// the caller should have dropped it, so ignore it defensively.
		if !p.IsValid() || p.Bits() == 0 {
			continue
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// createPool persists rec, failing if its key exists.
func (a *Allocator) createPool(st store.Store, rec *Pool) error {
	val, err := rec.encode()
	if err != nil {
		return fmt.Errorf("encode pool %s: %w", rec.ID(), err)
	}
	err = st.Update(poolKey(rec.Space, rec.Prefix), func(old []byte) ([]byte, error) {
		if old != nil {
			return nil, errPoolExists
		}
		return val, nil
	})
	if err != nil {
		return fmt.Errorf("create pool %s: %w", rec.ID(), err)
	}
	return nil
}

// poolPrefixes lists the prefixes of every pool in every space: pools must
// not overlap even across spaces, since all of them end up routed on hosts.
func (a *Allocator) poolPrefixes() ([]netip.Prefix, error) {
	pools, err := a.Pools()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, len(pools))
	for i, p := range pools {
		out[i] = p.Prefix
	}
	return out, nil
}

// Pools returns every persisted pool record, ordered by space and prefix.
func (a *Allocator) Pools() ([]Pool, error) {
	var out []Pool
	for _, name := range a.spaceNames {
		kv, err := a.spaces[name].List(poolsPrefix(name))
		if err != nil {
			return nil, fmt.Errorf("list pools of address space %s: %w", name, err)
		}
		for k, v := range kv {
			p, err := decodePool(k, v)
			if err != nil {
				return nil, err
			}
			out = append(out, *p)
		}
	}
	slices.SortFunc(out, func(x, y Pool) int {
		if c := strings.Compare(x.Space, y.Space); c != 0 {
			return c
		}
		return x.Prefix.Addr().Compare(y.Prefix.Addr())
	})
	return out, nil
}

// ReleasePool implements api.Ipam. An unknown pool is not an error: dockerd
// may repeat the call after a failure. A pool bound to an overlay first
// gives back the blocks this host holds in the cluster store; when that
// store cannot be reached the local record stays, with the error, so the
// blocks are not forgotten: reconciliation releases the pool again (dockerd
// no longer holds it) until the store answers.
func (a *Allocator) ReleasePool(req *api.ReleasePoolRequest) error {
	st, key, err := a.lookup(req.PoolID)
	if err != nil {
		return err
	}
	old, err := st.Get(key)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("release pool %s: %w", req.PoolID, err)
	}
	// A record that cannot be decoded is deleted all the same, as before
	// overlays: nothing could use it.
	if p, _ := decodePool(key, old); p != nil && p.Overlay != "" {
		if err := a.releaseOverlayBlocks(p); err != nil {
			return fmt.Errorf("release pool %s: %w", req.PoolID, err)
		}
	}
	err = st.Update(key, func(old []byte) ([]byte, error) {
		if old == nil {
			return nil, errNoChange
		}
		return nil, nil
	})
	if err != nil && !errors.Is(err, errNoChange) {
		return fmt.Errorf("release pool %s: %w", req.PoolID, err)
	}
	return nil
}

// releaseOverlayBlocks deletes the blocks this host holds for pool p in the
// cluster store: every block of p's overlay inside p's prefix that the
// store says is this host's, so one whose claim was answered too late to
// be recorded goes too.
func (a *Allocator) releaseOverlayBlocks(p *Pool) error {
	if a.cluster == nil {
		return fmt.Errorf("it is bound to overlay %s, whose blocks need the cluster store: set CONSUL_HTTP_ADDR", p.Overlay)
	}
	a.claimMu.Lock()
	defer a.claimMu.Unlock()
	if _, err := a.releaseBlocks(p.Overlay, a.host, p.Prefix); err != nil {
		return fmt.Errorf("release its blocks of overlay %s: %w", p.Overlay, clusterStoreError(err))
	}
	return nil
}

// updatePool applies change to the pool record under key in one
// store.Update. What change refuses comes back as it is (it names the
// address and pool; the user sees it verbatim), errNoChange as success
// without a write; store failures are wrapped with what.
func updatePool(st store.Store, key, id, what string, change func(*Pool) error) error {
	// Set on every run of fn; the store may run it more than once.
	var refused error
	err := st.Update(key, func(old []byte) ([]byte, error) {
		refused = nil
		if old == nil {
			refused = fmt.Errorf("pool %s does not exist", id)
			return nil, refused
		}
		p, err := decodePool(key, old)
		if err != nil {
			return nil, err
		}
		if err := change(p); err != nil {
			refused = err
			return nil, err
		}
		return p.encode()
	})
	switch {
	case errors.Is(err, errNoChange):
		return nil
	case refused != nil && errors.Is(err, refused):
		return refused
	case err != nil:
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// lookup resolves a PoolID to its store and key.
func (a *Allocator) lookup(id string) (store.Store, string, error) {
	space, pfx, err := parsePoolID(id)
	if err != nil {
		return nil, "", err
	}
	st, err := a.space(space)
	if err != nil {
		return nil, "", fmt.Errorf("pool %s: %w", id, err)
	}
	return st, poolKey(space, pfx), nil
}

// RequestAddress implements api.Ipam. The allocation is persisted before it
// is returned.
func (a *Allocator) RequestAddress(req *api.RequestAddressRequest) (*api.RequestAddressResponse, error) {
	st, key, err := a.lookup(req.PoolID)
	if err != nil {
		return nil, err
	}
	var want netip.Addr
	if req.Address != "" {
		if want, err = parseAddr(req.Address); err != nil {
			return nil, err
		}
	}
	gateway := req.Options[optRequestAddressType] == requestTypeGateway

	var got netip.Prefix
	var overlay string
	err = updatePool(st, key, req.PoolID, "request address from pool "+req.PoolID, func(p *Pool) error {
		if p.Overlay != "" && !gateway {
			// Its addresses come from blocks; the gateway stays local,
			// as every host's bridge carries the same one.
			overlay = p.Overlay
			return errBound
		}
		var addr netip.Addr
		var err error
		switch {
		case want.IsValid():
			addr, err = want, p.claim(want)
		case gateway:
			addr, err = p.claimGateway()
		default:
			addr, err = p.claimNext()
		}
		if err != nil {
			return err
		}
		if gateway {
			p.Gateway = addr
		}
		got = netip.PrefixFrom(addr, p.Prefix.Bits())
		return nil
	})
	if errors.Is(err, errBound) {
		if a.cluster == nil {
			return nil, fmt.Errorf("pool %s is bound to overlay %s: overlay networks need a cluster store: set CONSUL_HTTP_ADDR", req.PoolID, overlay)
		}
		got, err = a.requestOverlayAddress(st, key, req.PoolID, want)
	}
	if err != nil {
		return nil, err
	}
	return &api.RequestAddressResponse{Address: got.String()}, nil
}

// ReleaseAddress implements api.Ipam. Releasing an address that is not
// allocated, or from a pool that is gone, is a no-op: dockerd may repeat it.
func (a *Allocator) ReleaseAddress(req *api.ReleaseAddressRequest) error {
	st, key, err := a.lookup(req.PoolID)
	if err != nil {
		return err
	}
	addr, err := parseAddr(req.Address)
	if err != nil {
		return err
	}
	err = st.Update(key, func(old []byte) ([]byte, error) {
		if old == nil {
			return nil, errNoChange
		}
		p, err := decodePool(key, old)
		if err != nil {
			return nil, err
		}
		if !p.remove(addr) {
			return nil, errNoChange
		}
		if p.Gateway == addr {
			p.Gateway = netip.Addr{}
		}
		return p.encode()
	})
	if err != nil && !errors.Is(err, errNoChange) {
		return fmt.Errorf("release address %s from pool %s: %w", addr, req.PoolID, err)
	}
	return nil
}

// AdoptPool records a pool dockerd has on one of the plugin's networks
// but the store lost (a deleted or replaced state file), with the
// addresses dockerd shows in use, and reports whether it did. An existing
// pool is left as it is.
func (a *Allocator) AdoptPool(p Pool) (bool, error) {
	st, err := a.space(p.Space)
	if err != nil {
		return false, err
	}
	p.Prefix = p.Prefix.Masked()
	if p.Gateway.IsValid() {
		p.Allocated = append(p.Allocated, p.Gateway)
	}
	val, err := p.encode()
	if err != nil {
		return false, err
	}
	// decodePool drops addresses outside the pool and sorts the rest.
	rec, err := decodePool(p.ID(), val)
	if err != nil {
		return false, fmt.Errorf("adopt pool %s: %w", p.ID(), err)
	}
	a.poolMu.Lock()
	defer a.poolMu.Unlock()
	err = a.createPool(st, rec)
	if errors.Is(err, errPoolExists) {
		return false, nil
	}
	return err == nil, err
}
