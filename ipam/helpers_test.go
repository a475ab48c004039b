package ipam

import (
	"net/netip"
	"path/filepath"
	"testing"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/vxbridge/vxbridge/store"
)

// openStore opens a bolt file that is closed when the test ends (closing
// twice is harmless for tests that reopen it themselves).
func openStore(t testing.TB, path string) store.Store {
	t.Helper()
	st, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// newAlloc returns an Allocator over a fresh bolt file, both spaces in it
// as the plugin sets it up. host may be nil.
func newAlloc(t testing.TB, host []netip.Prefix) *Allocator {
	t.Helper()
	return allocOn(t, openStore(t, filepath.Join(t.TempDir(), "state.db")), host)
}

func allocOn(t testing.TB, st store.Store, host []netip.Prefix) *Allocator {
	t.Helper()
	cfg := Config{Spaces: map[string]store.Store{LocalSpace: st, GlobalSpace: st}}
	if host != nil {
		cfg.HostPrefixes = func() ([]netip.Prefix, error) { return host, nil }
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, x := range s {
		out[i] = netip.MustParsePrefix(x)
	}
	return out
}

// mustPool creates a pool in the local space and returns its PoolID.
func mustPool(t testing.TB, a *Allocator, pool, sub string) string {
	t.Helper()
	res, err := a.RequestPool(&api.RequestPoolRequest{
		AddressSpace: LocalSpace, Pool: pool, SubPool: sub,
		V6: pool != "" && netip.MustParsePrefix(pool).Addr().Is6(),
	})
	if err != nil {
		t.Fatalf("RequestPool(%s, %s): %v", pool, sub, err)
	}
	return res.PoolID
}

// alloc requests an address ("" = next) and fails the test on error.
func alloc(t testing.TB, a *Allocator, id, addr string) string {
	t.Helper()
	res, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: id, Address: addr})
	if err != nil {
		t.Fatalf("RequestAddress(%s, %q): %v", id, addr, err)
	}
	return res.Address
}

// allocInOrder asks for the next free address once per want and checks
// that they come in that order.
func allocInOrder(t testing.TB, a *Allocator, id string, want ...string) {
	t.Helper()
	for _, w := range want {
		if got := alloc(t, a, id, ""); got != w {
			t.Fatalf("got %s, want %s", got, w)
		}
	}
}

func gateway(t testing.TB, a *Allocator, id string) string {
	t.Helper()
	res, err := a.RequestAddress(&api.RequestAddressRequest{
		PoolID:  id,
		Options: map[string]string{optRequestAddressType: requestTypeGateway},
	})
	if err != nil {
		t.Fatalf("gateway from %s: %v", id, err)
	}
	return res.Address
}

func release(t testing.TB, a *Allocator, id, addr string) {
	t.Helper()
	if err := a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: id, Address: addr}); err != nil {
		t.Fatalf("ReleaseAddress(%s, %s): %v", id, addr, err)
	}
}

// allocated returns the persisted allocations of the pool with this ID.
func allocated(t testing.TB, a *Allocator, id string) []netip.Addr {
	t.Helper()
	pools, err := a.Pools()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		if p.ID() == id {
			return p.Allocated
		}
	}
	t.Fatalf("pool %s not persisted", id)
	return nil
}

func wantErr(t testing.TB, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %q", want)
	}
	if err.Error() != want {
		t.Fatalf("got error %q, want %q", err, want)
	}
}
