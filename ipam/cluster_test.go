package ipam

import (
	"errors"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/vxbridge/vxbridge/store"
	"github.com/vxbridge/vxbridge/store/consul"
	"github.com/vxbridge/vxbridge/store/consul/consultest"
)

// The cluster tests run "hosts" (Allocators on their own bbolt files) that
// share a real Consul agent, each test under its own key prefix.
func TestMain(m *testing.M) { consultest.Main(m) }

// clusterOn opens the cluster store of one test (its own key prefix).
func clusterOn(t *testing.T, agent *consultest.Agent, timeout time.Duration) store.Store {
	t.Helper()
	s, err := consul.Open(consul.Options{Address: agent.Addr, Prefix: consultest.Prefix(t, "ipam-test"), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testHost is one host: its Allocator, its state file and the overlay
// pool it binds.
type testHost struct {
	name, path, pool string
	a                *Allocator
}

func newHost(t *testing.T, cluster store.Store, name string) *testHost {
	t.Helper()
	h := &testHost{name: name, path: filepath.Join(t.TempDir(), name+".db")}
	h.open(t, cluster)
	return h
}

// open (re)starts the host's Allocator on its state file.
func (h *testHost) open(t *testing.T, cluster store.Store) {
	t.Helper()
	st := openStore(t, h.path)
	a, err := New(Config{Spaces: map[string]store.Store{LocalSpace: st, GlobalSpace: st}, Cluster: cluster, Host: h.name})
	if err != nil {
		t.Fatal(err)
	}
	h.a = a
}

// join does what dockerd and the driver do on each host for an overlay:
// the pool, its gateway, then the binding.
func (h *testHost) join(t *testing.T, pool, sub, overlay string) {
	t.Helper()
	h.pool = mustPool(t, h.a, pool, sub)
	gateway(t, h.a, h.pool)
	if err := h.a.BindOverlay(h.pool, overlay); err != nil {
		t.Fatal(err)
	}
}

func (h *testHost) request(addr string) (netip.Addr, error) {
	res, err := h.a.RequestAddress(&api.RequestAddressRequest{PoolID: h.pool, Address: addr})
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.MustParsePrefix(res.Address).Addr(), nil
}

func (h *testHost) mustRequest(t *testing.T, addr string) netip.Addr {
	t.Helper()
	got, err := h.request(addr)
	if err != nil {
		t.Fatalf("host %s: RequestAddress(%q): %v", h.name, addr, err)
	}
	return got
}

func (h *testHost) record(t *testing.T) Pool {
	t.Helper()
	pools, err := h.a.Pools()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		if p.ID() == h.pool {
			return p
		}
	}
	t.Fatalf("host %s: pool %s not recorded", h.name, h.pool)
	return Pool{}
}

// rawRecord is the pool's record as stored, to see that a failure wrote
// nothing.
func (h *testHost) rawRecord(t *testing.T) string {
	t.Helper()
	_, key, err := h.a.lookup(h.pool)
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.a.spaces[LocalSpace].Get(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// clusterBlocks reads the cluster store: block -> holder, for overlay.
func clusterBlocks(t *testing.T, cluster store.Store, overlay string) map[string]string {
	t.Helper()
	kv, err := cluster.List(blocksPrefix(overlay))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for k, v := range kv {
		_, b, ok := parseBlockKey(k)
		if !ok {
			t.Fatalf("stray key %s", k)
		}
		if out[b.String()], err = blockHolder(k, v); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// checkBlocks: the cluster store and the hosts' records agree on who
// holds which block, and no block is held twice.
func checkBlocks(t *testing.T, cluster store.Store, overlay string, hosts ...*testHost) {
	t.Helper()
	recorded := map[string]string{}
	for _, h := range hosts {
		for _, b := range h.record(t).Blocks {
			if other, dup := recorded[b.String()]; dup {
				t.Fatalf("block %s recorded by hosts %s and %s", b, other, h.name)
			}
			recorded[b.String()] = h.name
		}
	}
	if inCluster := clusterBlocks(t, cluster, overlay); !maps.Equal(recorded, inCluster) {
		t.Fatalf("blocks recorded by the hosts %v, in the cluster store %v", recorded, inCluster)
	}
}

// 30 concurrent requests spread over three hosts: 30 distinct addresses,
// none the gateway, each in a block its host holds; each block claimed
// once; a released address comes back on its host and only there.
func TestOverlayConcurrentHosts(t *testing.T) {
	cluster := clusterOn(t, consultest.Shared(t), 0)
	hosts := []*testHost{newHost(t, cluster, "a"), newHost(t, cluster, "b"), newHost(t, cluster, "c")}
	for _, h := range hosts {
		h.join(t, "10.50.0.0/24", "", "demo")
	}

	type result struct {
		h    *testHost
		addr netip.Addr
		err  error
	}
	results := make([]result, 30)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			h := hosts[i%len(hosts)]
			addr, err := h.request("")
			results[i] = result{h, addr, err}
		})
	}
	wg.Wait()
	seen := map[netip.Addr]string{}
	for _, r := range results {
		if r.err != nil {
			t.Fatalf("host %s: %v", r.h.name, r.err)
		}
		if other, dup := seen[r.addr]; dup {
			t.Fatalf("%s handed out twice (hosts %s and %s)", r.addr, other, r.h.name)
		}
		seen[r.addr] = r.h.name
		if r.addr == netip.MustParseAddr("10.50.0.1") {
			t.Fatal("the gateway handed out")
		}
		if p := r.h.record(t); !p.holds(p.blockOf(r.addr)) {
			t.Fatalf("host %s handed out %s outside its blocks %v", r.h.name, r.addr, p.Blocks)
		}
	}
	checkBlocks(t, cluster, "demo", hosts...)
	for _, h := range hosts {
		// Ten addresses fit in one block: one claim each.
		if p := h.record(t); len(p.Blocks) != 1 || len(p.Allocated) != 11 {
			t.Fatalf("host %s: blocks %v, %d allocated; want 1 block, 10 addresses and the gateway", h.name, p.Blocks, len(p.Allocated))
		}
	}

	// A released address comes back on its host, and stays refused to
	// the others.
	var gone netip.Addr
	for addr, name := range seen {
		if name == "b" {
			gone = addr
			break
		}
	}
	release(t, hosts[1].a, hosts[1].pool, gone.String())
	if _, err := hosts[0].request(gone.String()); err == nil || !strings.Contains(err.Error(), "held by host b") {
		t.Fatalf("host a took %s of host b's block: %v", gone, err)
	}
	if got := hosts[1].mustRequest(t, gone.String()); got != gone {
		t.Fatalf("got %s back, want %s", got, gone)
	}
	// And automatically, once the block wraps around.
	release(t, hosts[1].a, hosts[1].pool, gone.String())
	for range 64 {
		if got := hosts[1].mustRequest(t, ""); got == gone {
			return
		}
	}
	t.Fatalf("released %s never came back on host b", gone)
}

// --ip: in this host's block or an unheld one (claimed) it is given; in
// another host's it is refused naming the host. When every block is held
// and this host's are full, the pool is exhausted cluster-wide; an
// operator's ReleaseHostBlocks gives a dead host's blocks back.
func TestOverlayExplicitExhaustionAndDeadHost(t *testing.T) {
	cluster := clusterOn(t, consultest.Shared(t), 0)
	a, b := newHost(t, cluster, "a"), newHost(t, cluster, "b")
	a.join(t, "10.60.0.0/25", "", "demo") // two blocks: .0/26 and .64/26
	b.join(t, "10.60.0.0/25", "", "demo")

	if got := b.mustRequest(t, "10.60.0.70"); got.String() != "10.60.0.70" {
		t.Fatalf("got %s", got)
	}
	checkBlocks(t, cluster, "demo", a, b) // b claimed .64/26 for its --ip
	_, err := a.request("10.60.0.100")
	wantErr(t, err, "address 10.60.0.100 is in block 10.60.0.64/26 of overlay demo, held by host b")
	if got := b.mustRequest(t, ""); got.String() != "10.60.0.64" {
		t.Fatalf("b's next address %s, want 10.60.0.64 (the first of its block)", got)
	}

	for range 62 { // .2 to .63: the gateway .1 is taken
		a.mustRequest(t, "")
	}
	checkBlocks(t, cluster, "demo", a, b)
	before := a.rawRecord(t)
	_, err = a.request("")
	wantErr(t, err, "pool 10.60.0.0/25 is exhausted cluster-wide (blocks held by hosts a, b)")
	if a.rawRecord(t) != before {
		t.Fatal("a refused request changed the record")
	}
	_, err = b.request("10.60.0.9")
	wantErr(t, err, "address 10.60.0.9 is in block 10.60.0.0/26 of overlay demo, held by host a")

	// b is gone for good: an operator on a gives its blocks back.
	if _, err := a.a.ReleaseHostBlocks("demo", "a"); err == nil || !strings.Contains(err.Error(), "this host") {
		t.Fatalf("releasing this host's own blocks: %v", err)
	}
	if n, err := a.a.ReleaseHostBlocks("demo", "b"); n != 1 || err != nil {
		t.Fatalf("ReleaseHostBlocks = %d, %v; want 1", n, err)
	}
	if got := a.mustRequest(t, ""); got.String() != "10.60.0.64" {
		t.Fatalf("after b's blocks were released: %s, want 10.60.0.64", got)
	}
	if got := clusterBlocks(t, cluster, "demo"); !maps.Equal(got, map[string]string{"10.60.0.0/26": "a", "10.60.0.64/26": "a"}) {
		t.Fatalf("blocks %v", got)
	}
	if n, err := b.a.ReleaseHostBlocks("", "a"); n != 2 || err != nil { // every overlay
		t.Fatalf("ReleaseHostBlocks of every overlay = %d, %v; want 2", n, err)
	}
	if n, err := b.a.ReleaseHostBlocks("", "nobody"); n != 0 || err != nil {
		t.Fatalf("ReleaseHostBlocks of an unknown host = %d, %v", n, err)
	}
}

// With --ip-range, blocks come from the range; IPv6 pools are cut in
// /122s.
func TestOverlayRangeAndIPv6(t *testing.T) {
	cluster := clusterOn(t, consultest.Shared(t), 0)
	a, b := newHost(t, cluster, "a"), newHost(t, cluster, "b")
	a.join(t, "10.70.0.0/24", "10.70.0.128/25", "demo")
	b.join(t, "10.70.0.0/24", "10.70.0.128/25", "demo")
	if got := a.mustRequest(t, ""); got.String() != "10.70.0.128" {
		t.Fatalf("a: %s", got)
	}
	if got := b.mustRequest(t, ""); got.String() != "10.70.0.192" {
		t.Fatalf("b: %s", got)
	}
	checkBlocks(t, cluster, "demo", a, b)

	a.join(t, "fd00:70::/64", "", "demo6")
	b.join(t, "fd00:70::/64", "", "demo6")
	if got := a.mustRequest(t, ""); got.String() != "fd00:70::2" { // ::1 is the gateway
		t.Fatalf("a: %s", got)
	}
	if got := b.mustRequest(t, ""); got.String() != "fd00:70::40" {
		t.Fatalf("b: %s", got)
	}
	checkBlocks(t, cluster, "demo6", a, b)
	if p := a.record(t); !slices.Equal(p.BlockUse(), []BlockUse{{netip.MustParsePrefix("fd00:70::/122"), 2, 64}}) {
		t.Fatalf("BlockUse = %v", p.BlockUse())
	}
}

func TestBindOverlay(t *testing.T) {
	cluster := clusterOn(t, consultest.Shared(t), 0)
	a := newHost(t, cluster, "a")
	a.join(t, "10.80.0.0/24", "", "demo")
	if err := a.a.BindOverlay(a.pool, "demo"); err != nil {
		t.Fatalf("binding again: %v", err)
	}
	wantErr(t, a.a.BindOverlay(a.pool, "other"), "pool vxlocal/10.80.0.0/24 is bound to overlay demo, not other")
	wantErr(t, a.a.BindOverlay("vxlocal/10.81.0.0/24", "demo"), "pool vxlocal/10.81.0.0/24 does not exist")
	if err := a.a.BindOverlay(a.pool, "a/b"); err == nil {
		t.Fatal("an overlay name with a slash was accepted")
	}
	if p := a.record(t); p.Overlay != "demo" || len(p.Blocks) != 0 || p.Gateway.String() != "10.80.0.1" {
		t.Fatalf("record %+v", p)
	}
	// The gateway and --aux-address addresses asked for before the
	// binding claimed no block.
	if got := clusterBlocks(t, cluster, "demo"); len(got) != 0 {
		t.Fatalf("blocks %v before any container", got)
	}
}

// A restarted Allocator on the same state file keeps its blocks and goes
// on after the addresses it handed out; another host never gets them.
func TestOverlayRestart(t *testing.T) {
	cluster := clusterOn(t, consultest.Shared(t), 0)
	a, b := newHost(t, cluster, "a"), newHost(t, cluster, "b")
	a.join(t, "10.90.0.0/24", "", "demo")
	b.join(t, "10.90.0.0/24", "", "demo")
	seen := map[netip.Addr]bool{}
	take := func(h *testHost, n int) {
		t.Helper()
		for range n {
			addr := h.mustRequest(t, "")
			if seen[addr] {
				t.Fatalf("%s handed out twice", addr)
			}
			seen[addr] = true
		}
	}
	take(a, 40)
	take(b, 5)
	blocks := a.record(t).Blocks

	if err := a.a.spaces[LocalSpace].Close(); err != nil {
		t.Fatal(err)
	}
	a.open(t, cluster)
	if got := a.record(t).Blocks; !slices.Equal(got, blocks) {
		t.Fatalf("blocks after restart %v, want %v", got, blocks)
	}
	take(a, 40) // fills its first block, claims another
	take(b, 60)
	checkBlocks(t, cluster, "demo", a, b)
}

// A block the cluster store gives this host but its record lacks (a claim
// whose answer was lost, a state file replaced) is taken back, not
// claimed anew; releasing the pool gives it back too.
func TestOverlayBlockTakenBackAndReleasePool(t *testing.T) {
	cluster := clusterOn(t, consultest.Shared(t), 0)
	a, b := newHost(t, cluster, "a"), newHost(t, cluster, "b")
	a.join(t, "10.91.0.0/24", "", "demo")
	b.join(t, "10.91.0.0/24", "", "demo")
	b.mustRequest(t, "")
	lost := netip.MustParsePrefix("10.91.0.128/26")
	if err := cluster.Update(blockKey("demo", lost), func([]byte) ([]byte, error) { return []byte(`{"host":"a"}`), nil }); err != nil {
		t.Fatal(err)
	}
	if got := a.mustRequest(t, ""); got.String() != "10.91.0.128" {
		t.Fatalf("got %s, want the first address of the block a already holds", got)
	}
	checkBlocks(t, cluster, "demo", a, b)

	// Another lost claim, then the pool goes: every block a holds goes.
	if err := cluster.Update(blockKey("demo", netip.MustParsePrefix("10.91.0.192/26")), func([]byte) ([]byte, error) {
		return []byte(`{"host":"a"}`), nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.a.ReleasePool(&api.ReleasePoolRequest{PoolID: a.pool}); err != nil {
		t.Fatal(err)
	}
	if got := clusterBlocks(t, cluster, "demo"); !maps.Equal(got, map[string]string{"10.91.0.0/26": "b"}) {
		t.Fatalf("blocks after a released its pool: %v", got)
	}
	if pools, err := a.a.Pools(); err != nil || len(pools) != 0 {
		t.Fatalf("pools after release: %v, %v", pools, err)
	}
	if err := a.a.ReleasePool(&api.ReleasePoolRequest{PoolID: a.pool}); err != nil {
		t.Fatalf("releasing again: %v", err)
	}
}

// With the cluster store down, a host goes on handing out addresses of
// the blocks it holds; what needs a claim fails with a clear error and
// records nothing; the pool is not released (its blocks would be
// forgotten).
func TestOverlayClusterStoreDown(t *testing.T) {
	agent := consultest.Start(t)
	cluster := clusterOn(t, agent, time.Second)
	a := newHost(t, cluster, "a")
	a.join(t, "10.92.0.0/24", "", "demo")
	a.mustRequest(t, "")
	agent.Stop()

	for range 60 { // .3 to .62: no round trip
		a.mustRequest(t, "")
	}
	a.mustRequest(t, "10.92.0.63")
	before := a.rawRecord(t)
	for _, addr := range []string{"", "10.92.0.200"} {
		start := time.Now()
		_, err := a.request(addr)
		if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "cluster store unavailable: ") ||
			!strings.Contains(err.Error(), agent.Addr) {
			t.Fatalf("RequestAddress(%q) with the cluster store down: %v", addr, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("RequestAddress(%q) took %s", addr, d)
		}
		if a.rawRecord(t) != before {
			t.Fatalf("RequestAddress(%q) changed the record", addr)
		}
		t.Log(err)
	}
	err := a.a.ReleasePool(&api.ReleasePoolRequest{PoolID: a.pool})
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "cluster store unavailable") {
		t.Fatalf("ReleasePool with the cluster store down: %v", err)
	}
	if a.rawRecord(t) != before {
		t.Fatal("ReleasePool changed the record")
	}
	if _, err := a.a.ReleaseHostBlocks("demo", "b"); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("ReleaseHostBlocks with the cluster store down: %v", err)
	}
}

// A host removed with ReleaseHostBlocks while away comes back with its old
// state: CheckBlocks drops the blocks it no longer holds, claims back the
// free ones it still uses, and reports those another host took while its
// containers use them, at every check until resolved.
func TestForgottenHostComesBack(t *testing.T) {
	cluster := clusterOn(t, consultest.Shared(t), 0)
	a, b := newHost(t, cluster, "a"), newHost(t, cluster, "b")
	a.join(t, "10.70.0.0/24", "", "demo") // four blocks: .0, .64, .128, .192
	b.join(t, "10.70.0.0/24", "", "demo")
	a.mustRequest(t, "")                   // a: .0/26
	b.mustRequest(t, "10.70.0.70")         // b: .64/26, a container
	b.mustRequest(t, "10.70.0.130")        // b: .128/26…
	release(t, b.a, b.pool, "10.70.0.130") // …no longer used
	b.mustRequest(t, "10.70.0.200")        // b: .192/26, a container
	checkBlocks(t, cluster, "demo", a, b)
	if c, err := b.a.CheckBlocks(nil); err != nil || c.Dropped+c.Reclaimed+len(c.Conflicts) != 0 {
		t.Fatalf("check of a host that holds its blocks: %+v, %v", c, err)
	}

	// b is forgotten while away, and a takes one of its blocks (and one
	// of its containers' addresses).
	if n, err := a.a.ReleaseHostBlocks("demo", "b"); n != 3 || err != nil {
		t.Fatalf("ReleaseHostBlocks = %d, %v; want 3", n, err)
	}
	a.mustRequest(t, "10.70.0.70")

	// b comes back with its state and its two containers.
	if err := b.a.spaces[LocalSpace].Close(); err != nil {
		t.Fatal(err)
	}
	b.open(t, cluster)
	running := []netip.Addr{netip.MustParseAddr("10.70.0.70"), netip.MustParseAddr("10.70.0.200")}
	c, err := b.a.CheckBlocks(running)
	if err != nil {
		t.Fatal(err)
	}
	want := []BlockConflict{{Overlay: "demo", Block: netip.MustParsePrefix("10.70.0.64/26"), Holder: "a", Addresses: running[:1]}}
	if c.Dropped != 2 || c.Reclaimed != 1 || !slices.EqualFunc(c.Conflicts, want, func(x, y BlockConflict) bool {
		return x.Overlay == y.Overlay && x.Block == y.Block && x.Holder == y.Holder && slices.Equal(x.Addresses, y.Addresses)
	}) {
		t.Fatalf("check = %+v; want 2 dropped (.64 held by a, .128 unused), .192 claimed back, .70 in conflict with a", c)
	}
	checkBlocks(t, cluster, "demo", a, b)
	if got := clusterBlocks(t, cluster, "demo"); got["10.70.0.192/26"] != "b" || got["10.70.0.64/26"] != "a" {
		t.Fatalf("blocks %v", got)
	}
	// b hands out nothing more from a's block: its next address is in the
	// one it claimed back.
	if got := b.mustRequest(t, ""); !netip.MustParsePrefix("10.70.0.192/26").Contains(got) {
		t.Fatalf("b's next address %s, want one in 10.70.0.192/26", got)
	}
	// Still a conflict at the next check, until the container is gone.
	if c, err := b.a.CheckBlocks(running); err != nil || len(c.Conflicts) != 1 || len(b.a.BlockConflicts()) != 1 {
		t.Fatalf("second check: %+v, %v", c, err)
	}
	if c, err := b.a.CheckBlocks(running[1:]); err != nil || len(c.Conflicts)+c.Dropped+c.Reclaimed != 0 || len(b.a.BlockConflicts()) != 0 {
		t.Fatalf("check once the container is gone: %+v, %v", c, err)
	}
}
