package ipam

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/vxbridge/vxbridge/store"
)

// The block grid: 64 addresses (IPv4 /26, IPv6 /122) laid on the pool,
// the whole pool when smaller; automatic addresses come from the blocks
// that overlap the range, each within the range and without reserved
// addresses.
func TestBlockCarving(t *testing.T) {
	tests := []struct {
		pool, sub string
		blocks    []string // block: first-last usable address
	}{
		{"10.1.0.0/24", "", []string{
			"10.1.0.0/26: 10.1.0.1-10.1.0.63", "10.1.0.64/26: 10.1.0.64-10.1.0.127",
			"10.1.0.128/26: 10.1.0.128-10.1.0.191", "10.1.0.192/26: 10.1.0.192-10.1.0.254"}},
		{"10.1.0.0/28", "", []string{"10.1.0.0/28: 10.1.0.1-10.1.0.14"}},
		{"10.1.0.0/26", "", []string{"10.1.0.0/26: 10.1.0.1-10.1.0.62"}},
		{"10.1.0.0/24", "10.1.0.128/25", []string{
			"10.1.0.128/26: 10.1.0.128-10.1.0.191", "10.1.0.192/26: 10.1.0.192-10.1.0.254"}},
		// A range smaller than a block: the block that holds it, used
		// only within the range.
		{"10.1.0.0/24", "10.1.0.72/29", []string{"10.1.0.64/26: 10.1.0.72-10.1.0.79"}},
		{"10.1.0.0/16", "10.1.1.0/25", []string{"10.1.1.0/26: 10.1.1.0-10.1.1.63", "10.1.1.64/26: 10.1.1.64-10.1.1.127"}},
		{"fd00::/64", "fd00::/120", []string{
			"fd00::/122: fd00::1-fd00::3f", "fd00::40/122: fd00::40-fd00::7f",
			"fd00::80/122: fd00::80-fd00::bf", "fd00::c0/122: fd00::c0-fd00::ff"}},
		{"fd00::/124", "", []string{"fd00::/124: fd00::1-fd00::f"}},
	}
	for _, tc := range tests {
		p := testPool(tc.pool, tc.sub)
		var got []string
		for b := range p.autoBlocks() {
			r, ok := p.blockRange(b)
			if !ok {
				t.Fatalf("%s/%s: block %s has no range", tc.pool, tc.sub, b)
			}
			got = append(got, b.String()+": "+r.lo.String()+"-"+r.hi.String())
		}
		if !slices.Equal(got, tc.blocks) {
			t.Errorf("pool %s range %q: blocks\n%s\nwant\n%s", tc.pool, tc.sub, strings.Join(got, "\n"), strings.Join(tc.blocks, "\n"))
		}
	}

	// A /64 has 2^58 blocks: they are yielded one at a time.
	p := testPool("fd00::/64", "")
	var first []netip.Prefix
	for b := range p.autoBlocks() {
		if first = append(first, b); len(first) == 3 {
			break
		}
	}
	if want := prefixes("fd00::/122", "fd00::40/122", "fd00::80/122"); !slices.Equal(first, want) {
		t.Errorf("first blocks of a /64: %v, want %v", first, want)
	}

	// Every address of the pool, in the range or not, has one block.
	p = testPool("10.1.0.0/24", "10.1.0.72/29")
	for addr, want := range map[string]string{"10.1.0.5": "10.1.0.0/26", "10.1.0.72": "10.1.0.64/26", "10.1.0.255": "10.1.0.192/26"} {
		if b := p.blockOf(netip.MustParseAddr(addr)); b.String() != want {
			t.Errorf("blockOf(%s) = %s, want %s", addr, b, want)
		}
	}
	if _, ok := p.blockRange(netip.MustParsePrefix("10.1.0.0/26")); ok {
		t.Error("a block outside the range has a range")
	}
}

func testPool(pool, sub string) *Pool {
	p := &Pool{Prefix: netip.MustParsePrefix(pool)}
	p.V6 = p.Prefix.Addr().Is6()
	if sub != "" {
		p.SubPool = netip.MustParsePrefix(sub)
	}
	return p
}

func TestBlockKeys(t *testing.T) {
	for _, b := range prefixes("10.1.0.64/26", "fd00::40/122", "10.1.0.0/31") {
		key := blockKey("demo", b)
		ov, got, ok := parseBlockKey(key)
		if !ok || ov != "demo" || got != b {
			t.Errorf("parseBlockKey(%q) = %q, %s, %v", key, ov, got, ok)
		}
	}
	if key := blockKey("demo", netip.MustParsePrefix("10.1.0.64/26")); key != "ipam/overlays/demo/blocks/10.1.0.64_26" {
		t.Errorf("key %q", key)
	}
	for _, bad := range []string{
		"ipam/overlays/demo/blocks/10.1.0.64", "ipam/overlays//blocks/10.1.0.64_26", "ipam/overlays/demo/x/10.1.0.64_26",
		"ipam/overlays/demo/blocks/10.1.0.65_26", "overlays/demo/blocks/10.1.0.64_26",
	} {
		if _, _, ok := parseBlockKey(bad); ok {
			t.Errorf("parseBlockKey(%q) accepted", bad)
		}
	}
}

// Automatic addresses come serially from the blocks this host holds: after
// the cursor, on to the next block, then around to the first; never the
// gateway; and nothing once they are full.
func TestClaimInBlocks(t *testing.T) {
	p := testPool("10.1.0.0/24", "")
	gw := netip.MustParseAddr("10.1.0.1")
	p.Gateway = gw
	p.add(gw)
	if _, ok := p.claimInBlocks(); ok {
		t.Fatal("an address with no block held")
	}
	p.addBlock(netip.MustParsePrefix("10.1.0.128/26"))
	p.addBlock(netip.MustParsePrefix("10.1.0.0/26"))
	take := func(want string) {
		t.Helper()
		a, ok := p.claimInBlocks()
		if !ok || a.String() != want {
			t.Fatalf("got %s, %v; want %s", a, ok, want)
		}
	}
	take("10.1.0.2") // .0 is the network address, .1 the gateway
	p.Cursor = netip.MustParseAddr("10.1.0.62")
	take("10.1.0.63")
	take("10.1.0.128") // the next block held, skipping the one between
	p.Cursor = netip.MustParseAddr("10.1.0.191")
	take("10.1.0.3") // around to the first block
	p.remove(netip.MustParseAddr("10.1.0.128"))
	take("10.1.0.4") // serial: a released address is not reused at once

	// Full: 62 of block 0 and 64 of block 2 handed out or the gateway.
	for a := netip.MustParseAddr("10.1.0.2"); a.Compare(netip.MustParseAddr("10.1.0.191")) <= 0; a = a.Next() {
		if p.blockOf(a).Addr().String() != "10.1.0.64" {
			p.add(a)
		}
	}
	if a, ok := p.claimInBlocks(); ok {
		t.Fatalf("%s handed out from full blocks", a)
	}
	if p.hasFree(netip.MustParsePrefix("10.1.0.0/26")) || !p.hasFree(netip.MustParsePrefix("10.1.0.64/26")) {
		t.Fatal("hasFree is wrong")
	}
	got := p.BlockUse()
	want := []BlockUse{
		{netip.MustParsePrefix("10.1.0.0/26"), 63, 64},
		{netip.MustParsePrefix("10.1.0.128/26"), 64, 64},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("BlockUse = %v, want %v", got, want)
	}
}

func TestDecodeKeepsOnlyBlocksOfThePool(t *testing.T) {
	b := []byte(`{"space":"vxlocal","pool":"10.1.0.0/24","overlay":"demo",
		"blocks":["10.1.0.64/26","10.1.0.0/26","10.2.0.0/26","10.1.0.64/26","10.1.0.65/26","10.0.0.0/16"]}`)
	p, err := decodePool("k", b)
	if err != nil {
		t.Fatal(err)
	}
	if want := prefixes("10.1.0.0/26", "10.1.0.64/26"); !slices.Equal(p.Blocks, want) || p.Overlay != "demo" {
		t.Fatalf("blocks %v overlay %q, want %v", p.Blocks, p.Overlay, want)
	}
}

// Without a cluster store there are no overlays, and a bound pool is not
// silently served from this host alone.
func TestOverlayNeedsClusterStore(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "s.db"))
	a := allocOn(t, st, nil)
	id := mustPool(t, a, "10.1.0.0/24", "")
	wantErr(t, a.BindOverlay(id, "demo"), "overlay networks need a cluster store: set CONSUL_HTTP_ADDR")
	if _, err := a.ReleaseHostBlocks("demo", "b"); err == nil {
		t.Fatal("ReleaseHostBlocks without a cluster store: no error")
	}

	// A record bound by an earlier run that had one.
	key := poolKey(LocalSpace, netip.MustParsePrefix("10.1.0.0/24"))
	if err := st.Update(key, func(old []byte) ([]byte, error) {
		return []byte(strings.Replace(string(old), `"space"`, `"overlay":"demo","space"`, 1)), nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: id})
	wantErr(t, err, "pool vxlocal/10.1.0.0/24 is bound to overlay demo: overlay networks need a cluster store: set CONSUL_HTTP_ADDR")
	if got := allocated(t, a, id); len(got) != 0 {
		t.Fatalf("allocated %v", got)
	}
	if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: id}); err == nil || !strings.Contains(err.Error(), "CONSUL_HTTP_ADDR") {
		t.Fatalf("ReleasePool of a bound pool without a cluster store: %v", err)
	}
	allocated(t, a, id) // still recorded

	// A cluster store needs the host's name.
	for _, host := range []string{"", "a/b"} {
		_, err := New(Config{Spaces: map[string]store.Store{LocalSpace: st, GlobalSpace: st}, Cluster: st, Host: host})
		if err == nil || !strings.Contains(err.Error(), "host") {
			t.Errorf("New with Host %q: %v", host, err)
		}
	}
}
