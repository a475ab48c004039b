// Package cluster is vxbridge's multi-host control plane, kept in a shared
// store (Consul): overlay definitions and their VNIs, host membership under
// a session with a TTL, and the endpoints each host advertises under that
// session, so a dead host's endpoints vanish with it. Watches deliver every
// change to the caller, which programs the kernel (package overlay) and
// dockerd; nothing here touches either.
//
// Keys, below the store's own prefix:
//
//	overlays/<name>                    Overlay (JSON)
//	vnis/<vni>                         the overlay name holding the VNI
//	vni-cursor                         the last VNI handed out automatically
//	hosts/<host>                       Host, held by the host's session
//	endpoints/<overlay>/<host>/<id>    Endpoint, held by the host's session
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vxbridge/vxbridge/store"
)

// Overlay is the cluster-wide definition of one overlay network; each
// host's dockerd network of that name is an instance of it.
type Overlay struct {
	Name     string
	VNI      uint32
	Subnet4  netip.Prefix `json:",omitempty"`
	Gateway4 netip.Addr   `json:",omitempty"`
	Subnet6  netip.Prefix `json:",omitempty"`
	Gateway6 netip.Addr   `json:",omitempty"`
	MTU      int
	Internal bool
	IPv6     bool
	// Options are the network's -o options, as instances are created with.
	Options map[string]string `json:",omitempty"`
	// Creator is the host the network was first created on.
	Creator string
}

// Host is one member of the cluster.
type Host struct {
	Name string
	VTEP netip.Addr
}

// Endpoint is one container interface on an overlay, as its host
// advertises it.
type Endpoint struct {
	Overlay string
	Host    string
	ID      string
	MAC     string
	IPv4    netip.Addr `json:",omitempty"`
	IPv6    netip.Addr `json:",omitempty"`
	VTEP    netip.Addr
	// Names are the container's name and its aliases on the network, as
	// dockerd knows them: learned after the endpoint is made (package
	// names), so at first there are none.
	Names []string `json:",omitempty"`
	// Advertised is when its host put it in the cluster (that host's
	// clock): other hosts measure how long they took to program it.
	Advertised time.Time `json:",omitzero"`
}

// Shared is what the cluster store must offer: a store whose keys can be
// watched and tied to sessions (store/consul).
type Shared interface {
	store.Store
	store.Watcher
	store.Sessions
}

// Config configures a Node.
type Config struct {
	Store Shared
	// Local keeps the session ID across restarts of the plugin, so a
	// restart resumes the session and its keys never blink.
	Local store.Store
	Host  string
	VTEP  netip.Addr
	// TTL of the host's session: after about twice that (Consul's grace),
	// a dead host's endpoints are gone from every other host.
	TTL time.Duration
	Log *slog.Logger
	// Registered, if set, runs after each registration: the first, and
	// each one after a lost session, when this host may have been removed
	// meanwhile (its address blocks released by an operator).
	Registered func()
}

// Node is this host's membership in the cluster.
type Node struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	session store.Session
	// local holds what this host advertises, to put again under a new
	// session after the old one was lost.
	local map[string]Endpoint // by endpoint ID
}

const (
	overlaysKey  = "overlays/"
	vnisKey      = "vnis/"
	vniCursorKey = "vni-cursor"
	hostsKey     = "hosts/"
	endpointsKey = "endpoints/"
	sessionKey   = "cluster/session"

	// FirstVNI is the lowest VNI handed out automatically (lower ones are
	// left for users who pick their own with -o vxbridge.vni).
	FirstVNI = 4096
	// MaxVNI is the largest VNI VXLAN carries.
	MaxVNI = 1<<24 - 1
)

// New returns a Node; Join makes it a member.
func New(cfg Config) (*Node, error) {
	if cfg.Host == "" || strings.Contains(cfg.Host, "/") {
		return nil, fmt.Errorf("invalid host name %q", cfg.Host)
	}
	if !cfg.VTEP.IsValid() {
		return nil, errors.New("no tunnel (VTEP) address")
	}
	if cfg.TTL == 0 {
		cfg.TTL = 10 * time.Second
	}
	return &Node{cfg: cfg, log: cfg.Log, local: map[string]Endpoint{}}, nil
}

// Host is this host's name.
func (n *Node) Host() string { return n.cfg.Host }

// VTEP is this host's tunnel address.
func (n *Node) VTEP() netip.Addr { return n.cfg.VTEP }

// Join registers the host under its session (resumed when the last run's
// is still alive), then keeps it registered: when the session is lost
// (Consul down longer than the TTL), it makes a new one and advertises
// every local endpoint again. It returns once the first registration is
// done or failed; the upkeep runs until ctx ends.
func (n *Node) Join(ctx context.Context, local []Endpoint) error {
	n.mu.Lock()
	for _, ep := range local {
		n.local[ep.ID] = ep
	}
	n.mu.Unlock()
	err := n.register(ctx)
	go n.keep(ctx)
	return err
}

func (n *Node) register(ctx context.Context) error {
	var se store.Session
	if b, err := n.cfg.Local.Get(sessionKey); err == nil {
		if se, err = n.cfg.Store.ResumeSession(ctx, string(b)); err != nil && !errors.Is(err, store.ErrSessionGone) {
			return fmt.Errorf("resume cluster session: %w", err)
		}
	}
	resumed := se != nil
	if se == nil {
		var err error
		if se, err = n.cfg.Store.NewSession(ctx, "vxbridge "+n.cfg.Host, n.cfg.TTL); err != nil {
			return fmt.Errorf("create cluster session: %w", err)
		}
		id := se.ID()
		if err := n.cfg.Local.Update(sessionKey, func([]byte) ([]byte, error) { return []byte(id), nil }); err != nil {
			return fmt.Errorf("record cluster session: %w", err)
		}
	}
	host, _ := json.Marshal(Host{Name: n.cfg.Host, VTEP: n.cfg.VTEP})
	if err := se.Put(ctx, hostsKey+n.cfg.Host, host); err != nil {
		return fmt.Errorf("register host %s: %w", n.cfg.Host, err)
	}
	// The driver's records hold no names: keep those advertised before a
	// restart until they are learned again, so names never blink.
	known, err := n.cfg.Store.List(endpointsKey)
	if err != nil {
		return fmt.Errorf("list endpoints: %w", err)
	}
	// A resumed session's endpoints are still in place: they keep when
	// they were advertised. Under a new session they are put anew, now.
	was := map[string]Endpoint{}
	for _, ep := range decodeAll[Endpoint](known) {
		if ep.Host == n.cfg.Host {
			was[ep.ID] = ep
		}
	}
	now := time.Now()
	n.mu.Lock()
	n.session = se
	eps := make([]Endpoint, 0, len(n.local))
	for id, ep := range n.local {
		if ep.Names == nil {
			ep.Names = was[id].Names
		}
		ep.Advertised = now
		if old, ok := was[id]; ok && resumed && !old.Advertised.IsZero() {
			ep.Advertised = old.Advertised
		}
		n.local[id] = ep
		eps = append(eps, ep)
	}
	n.mu.Unlock()
	for _, ep := range eps {
		if err := n.put(ctx, se, ep); err != nil {
			return err
		}
	}
	n.log.Info("joined the cluster", "host", n.cfg.Host, "vtep", n.cfg.VTEP, "session", se.ID(), "endpoints", len(eps))
	if n.cfg.Registered != nil {
		n.cfg.Registered()
	}
	return nil
}

// keep re-registers whenever the session is lost or was never made.
func (n *Node) keep(ctx context.Context) {
	for {
		n.mu.Lock()
		se := n.session
		n.mu.Unlock()
		if se != nil {
			select {
			case <-ctx.Done():
				se.Close() // keys stay for the TTL: a restart resumes them
				return
			case <-se.Done():
				n.log.Warn("cluster session lost; joining again", "host", n.cfg.Host, "err", se.Err())
				n.mu.Lock()
				n.session = nil
				n.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		if err := n.register(ctx); err != nil {
			n.log.Log(ctx, retryLevel(err), "join the cluster", "err", err)
		}
	}
}

func (n *Node) put(ctx context.Context, se store.Session, ep Endpoint) error {
	b, _ := json.Marshal(ep)
	if err := se.Put(ctx, endpointKey(ep.Overlay, ep.Host, ep.ID), b); err != nil {
		return fmt.Errorf("advertise endpoint %s: %w", short(ep.ID), err)
	}
	return nil
}

func endpointKey(overlay, host, id string) string {
	return endpointsKey + overlay + "/" + host + "/" + id
}

// Advertise publishes a local endpoint to every host: once it returns,
// their watches program it.
func (n *Node) Advertise(ctx context.Context, ep Endpoint) error {
	ep.Host, ep.VTEP, ep.Advertised = n.cfg.Host, n.cfg.VTEP, time.Now()
	n.mu.Lock()
	se := n.session
	if old, ok := n.local[ep.ID]; ok && ep.Names == nil {
		ep.Names = old.Names // a repeated CreateEndpoint keeps the learned names
	}
	n.local[ep.ID] = ep
	n.mu.Unlock()
	if se == nil {
		n.forget(ep.ID)
		return fmt.Errorf("advertise endpoint %s: this host is not in the cluster (is Consul reachable?)", short(ep.ID))
	}
	if err := n.put(ctx, se, ep); err != nil {
		n.forget(ep.ID)
		return err
	}
	return nil
}

// LocalEndpoints returns what this host advertises.
func (n *Node) LocalEndpoints() []Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]Endpoint, 0, len(n.local))
	for _, ep := range n.local {
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SetNames advertises a local endpoint again with its container's names;
// an endpoint no longer advertised is left alone.
func (n *Node) SetNames(ctx context.Context, id string, names []string) error {
	n.mu.Lock()
	ep, ok := n.local[id]
	se := n.session
	if ok {
		ep.Names = names
		n.local[id] = ep
	}
	n.mu.Unlock()
	if !ok || se == nil {
		return nil // a new session puts it with its names
	}
	return n.put(ctx, se, ep)
}

func (n *Node) forget(id string) {
	n.mu.Lock()
	delete(n.local, id)
	n.mu.Unlock()
}

// Withdraw removes a local endpoint's advertisement.
func (n *Node) Withdraw(overlay, id string) error {
	n.forget(id)
	if err := n.cfg.Store.Update(endpointKey(overlay, n.cfg.Host, id), func([]byte) ([]byte, error) { return nil, nil }); err != nil {
		return fmt.Errorf("withdraw endpoint %s: %w", short(id), err)
	}
	return nil
}

// Define records an overlay cluster-wide, or checks a host's instance
// against the definition that exists, and returns the definition in force
// (its VNI chosen). A VNI or subnet another overlay uses is refused.
func (n *Node) Define(o Overlay) (Overlay, error) {
	if existing, err := n.Lookup(o.Name); err == nil {
		return existing, sameNetwork(existing, o)
	} else if !errors.Is(err, store.ErrNotFound) {
		return Overlay{}, err
	}
	all, err := n.Overlays()
	if err != nil {
		return Overlay{}, err
	}
	for _, other := range all {
		for _, p := range []netip.Prefix{o.Subnet4, o.Subnet6} {
			for _, q := range []netip.Prefix{other.Subnet4, other.Subnet6} {
				if p.IsValid() && q.IsValid() && p.Overlaps(q) {
					return Overlay{}, fmt.Errorf("subnet %s overlaps overlay %s's %s", p, other.Name, q)
				}
			}
		}
	}
	if o.VNI, err = n.claimVNI(o.Name, o.VNI); err != nil {
		return Overlay{}, err
	}
	o.Creator = n.cfg.Host
	b, _ := json.Marshal(o)
	err = n.cfg.Store.Update(overlaysKey+o.Name, func(old []byte) ([]byte, error) {
		if old != nil {
			return nil, errExists
		}
		return b, nil
	})
	if errors.Is(err, errExists) {
		// Another host defined it meanwhile: theirs stands.
		n.releaseVNI(o.VNI, o.Name)
		return n.Define(o)
	}
	if err != nil {
		n.releaseVNI(o.VNI, o.Name)
		return Overlay{}, fmt.Errorf("define overlay %s: %w", o.Name, err)
	}
	n.log.Info("overlay defined", "overlay", o.Name, "vni", o.VNI, "subnet", o.Subnet4, "subnet6", o.Subnet6)
	return o, nil
}

var errExists = errors.New("exists")

// sameNetwork checks an instance against the definition: the addresses
// must be the same on every host.
func sameNetwork(def, o Overlay) error {
	if o.Subnet4 != def.Subnet4 || (o.IPv6 && o.Subnet6 != def.Subnet6) {
		return fmt.Errorf("overlay %s exists with subnet %s %s; this network has %s %s (give the same --subnet, or another name)",
			def.Name, def.Subnet4, def.Subnet6, o.Subnet4, o.Subnet6)
	}
	if o.VNI != 0 && o.VNI != def.VNI {
		return fmt.Errorf("overlay %s exists with VNI %d, not %d", def.Name, def.VNI, o.VNI)
	}
	return nil
}

// claimVNI takes vni for name, or with vni 0 the next free one after the
// last handed out (vniCursorKey), wrapping from MaxVNI to FirstVNI: a VNI
// just freed is not handed out again until the range wraps, so a host
// that still has the old overlay's device (or a peer's entries for it)
// never carries a new overlay's traffic on it.
func (n *Node) claimVNI(name string, vni uint32) (uint32, error) {
	if vni != 0 {
		return vni, n.takeVNI(vni, name)
	}
	for tries := 0; tries < 10; tries++ {
		used, err := n.cfg.Store.List(vnisKey)
		if err != nil {
			return 0, fmt.Errorf("list VNIs: %w", err)
		}
		taken := map[uint32]bool{}
		for k := range used {
			v, _ := strconv.ParseUint(strings.TrimPrefix(k, vnisKey), 10, 32)
			taken[uint32(v)] = true
		}
		// The cursor moves by check-and-set, so two hosts never both
		// take the VNI after the same cursor; a VNI it passes and no one
		// claims (a crash in between) waits for the next wrap.
		err = n.cfg.Store.Update(vniCursorKey, func(old []byte) ([]byte, error) {
			last, _ := strconv.ParseUint(string(old), 10, 32)
			var ok bool
			if vni, ok = nextFreeVNI(uint32(last), taken); !ok {
				return nil, errors.New("no free VNI left")
			}
			return []byte(strconv.FormatUint(uint64(vni), 10)), nil
		})
		if err != nil {
			return 0, fmt.Errorf("choose a VNI: %w", err)
		}
		err = n.takeVNI(vni, name)
		if err == nil || !errors.Is(err, errVNITaken) {
			return vni, err
		}
	}
	return 0, errors.New("could not claim a VNI: too many hosts claiming at once, try again")
}

// nextFreeVNI is the first VNI after last, from FirstVNI to MaxVNI and
// round again, that taken does not hold.
func nextFreeVNI(last uint32, taken map[uint32]bool) (uint32, bool) {
	const size = MaxVNI - FirstVNI + 1
	v := last
	for range min(len(taken)+1, size) {
		v++
		if v < FirstVNI || v > MaxVNI {
			v = FirstVNI
		}
		if !taken[v] {
			return v, true
		}
	}
	return 0, false
}

var errVNITaken = errors.New("VNI taken")

func (n *Node) takeVNI(vni uint32, name string) error {
	err := n.cfg.Store.Update(vnisKey+strconv.FormatUint(uint64(vni), 10), func(old []byte) ([]byte, error) {
		if old != nil && string(old) != name {
			return nil, fmt.Errorf("VNI %d is already used by overlay %s: %w", vni, old, errVNITaken)
		}
		return []byte(name), nil
	})
	if err != nil && !errors.Is(err, errVNITaken) {
		return fmt.Errorf("claim VNI %d: %w", vni, err)
	}
	return err
}

func (n *Node) releaseVNI(vni uint32, name string) {
	n.cfg.Store.Update(vnisKey+strconv.FormatUint(uint64(vni), 10), func(old []byte) ([]byte, error) {
		if string(old) != name {
			return old, nil
		}
		return nil, nil
	})
}

// Lookup returns one overlay's definition, or an error wrapping
// store.ErrNotFound.
func (n *Node) Lookup(name string) (Overlay, error) {
	b, err := n.cfg.Store.Get(overlaysKey + name)
	if err != nil {
		return Overlay{}, fmt.Errorf("overlay %s: %w", name, err)
	}
	var o Overlay
	if err := json.Unmarshal(b, &o); err != nil {
		return Overlay{}, fmt.Errorf("decode overlay %s: %w", name, err)
	}
	return o, nil
}

// record is what the cluster keeps under one prefix, ordered by its key.
type record interface {
	Overlay | Endpoint | Host
	key() string
}

func (o Overlay) key() string   { return o.Name }
func (ep Endpoint) key() string { return ep.ID }
func (h Host) key() string      { return h.Name }

// decodeAll decodes the values of kv (one prefix's keys), leaving out what
// does not decode, ordered by key.
func decodeAll[T record](kv map[string][]byte) []T {
	var out []T
	for _, b := range kv {
		var v T
		if json.Unmarshal(b, &v) == nil {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b T) int { return strings.Compare(a.key(), b.key()) })
	return out
}

// Overlays returns every definition.
func (n *Node) Overlays() ([]Overlay, error) {
	kv, err := n.cfg.Store.List(overlaysKey)
	if err != nil {
		return nil, fmt.Errorf("list overlays: %w", err)
	}
	return decodeAll[Overlay](kv), nil
}

// Undefine removes an overlay everywhere, refusing while another host
// still has containers on it (dockerd only asks once this host has none).
func (n *Node) Undefine(name string) error {
	eps, err := n.Endpoints(name)
	if err != nil {
		return err
	}
	where := map[string]int{}
	for _, ep := range eps {
		if ep.Host != n.cfg.Host {
			where[ep.Host]++
		}
	}
	if len(where) > 0 {
		var hs []string
		for h, c := range where {
			hs = append(hs, fmt.Sprintf("%s (%d)", h, c))
		}
		slices.Sort(hs)
		return fmt.Errorf("overlay %s still has containers on host %s: remove them first", name, strings.Join(hs, ", "))
	}
	o, err := n.Lookup(name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := n.cfg.Store.Update(overlaysKey+name, func([]byte) ([]byte, error) { return nil, nil }); err != nil {
		return fmt.Errorf("remove overlay %s: %w", name, err)
	}
	n.releaseVNI(o.VNI, name)
	n.log.Info("overlay removed", "overlay", name, "vni", o.VNI)
	return nil
}

// Endpoints returns the endpoints advertised on one overlay ("" = all).
func (n *Node) Endpoints(overlay string) ([]Endpoint, error) {
	prefix := endpointsKey
	if overlay != "" {
		prefix += overlay + "/"
	}
	kv, err := n.cfg.Store.List(prefix)
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	return decodeAll[Endpoint](kv), nil
}

// Hosts returns the live members.
func (n *Node) Hosts() ([]Host, error) {
	kv, err := n.cfg.Store.List(hostsKey)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	return decodeAll[Host](kv), nil
}

// Watch calls apply with the current definitions and endpoints, then again
// after every change, until ctx ends. The first call waits until every
// watched prefix was read once, so it never gives a partial view (no
// endpoints yet) that would clear the kernel's entries. While the store
// cannot be reached it keeps what was last applied and retries: traffic
// keeps flowing. It logs, once each, a peer host leaving (its session
// ended) and joining.
func (n *Node) Watch(ctx context.Context, apply func([]Overlay, []Endpoint)) {
	changed := make(chan struct{}, 1)
	var mu sync.Mutex
	var overlays, endpoints, hosts map[string][]byte // nil until read once
	watch := func(prefix string, into *map[string][]byte) {
		var index uint64
		for ctx.Err() == nil {
			kv, next, err := n.cfg.Store.Watch(ctx, prefix, index, time.Minute)
			if err != nil {
				if ctx.Err() == nil {
					n.log.Log(ctx, retryLevel(err), "cluster watch", "prefix", prefix, "err", err)
					select {
					case <-ctx.Done():
					case <-time.After(time.Second):
					}
				}
				continue
			}
			mu.Lock()
			same := *into != nil && equal(*into, kv)
			*into = kv
			mu.Unlock()
			index = next
			if !same {
				select {
				case changed <- struct{}{}:
				default:
				}
			}
		}
	}
	go watch(overlaysKey, &overlays)
	go watch(endpointsKey, &endpoints)
	go watch(hostsKey, &hosts)
	var alive map[string]bool // peer hosts at the last apply; nil before it
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		mu.Lock()
		if overlays == nil || endpoints == nil || hosts == nil {
			mu.Unlock()
			continue // the prefix still unread signals when it is read
		}
		os, eps, hs := decodeAll[Overlay](overlays), decodeAll[Endpoint](endpoints), decodeAll[Host](hosts)
		mu.Unlock()
		alive = n.peersChanged(alive, hs)
		apply(os, eps)
	}
}

// peersChanged logs the peer hosts that left (a warning: what was theirs
// is gone from this host's kernel) or joined since was (nil: the first
// view, nothing logged), and returns the peers now alive.
func (n *Node) peersChanged(was map[string]bool, hs []Host) map[string]bool {
	now := map[string]bool{}
	for _, h := range hs {
		if h.Name == n.cfg.Host {
			continue
		}
		now[h.Name] = true
		if was != nil && !was[h.Name] {
			n.log.Info("peer host joined the cluster", "host", h.Name, "vtep", h.VTEP)
		}
	}
	for h := range was {
		if !now[h] {
			n.log.Warn("peer host gone: its Consul session ended (plugin stopped, host down or cut off), so its "+
				"containers' FDB and neighbour entries are removed here; its address blocks stay reserved until it "+
				"comes back; fix: bring its plugin back, or if it is gone for good run: vxbridge forget-host "+h, "host", h)
		}
	}
	return now
}

// retryLevel is the level of a failure retried every second: debug when
// the store cannot be reached (the store warns once per outage, not once
// per retry), else a warning.
func retryLevel(err error) slog.Level {
	if errors.Is(err, store.ErrUnavailable) {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

func equal(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || string(v) != string(w) {
			return false
		}
	}
	return true
}

func short(id string) string { return id[:min(12, len(id))] }
