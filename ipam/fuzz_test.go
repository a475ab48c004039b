package ipam

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	api "github.com/docker/go-plugins-helpers/ipam"
)

// FuzzRequestAddress throws arbitrary pool, subpool and address strings at
// the protocol methods. Whatever it gets, nothing may panic, every address
// handed out must be a legal host of its pool, and after releasing
// everything no record may be left behind.
func FuzzRequestAddress(f *testing.F) {
	f.Add("10.1.0.0/24", "10.1.0.128/25", "10.1.0.5", uint8(3))
	f.Add("10.1.0.0/30", "", "10.1.0.3", uint8(5))
	f.Add("fd00::/64", "fd00::/126", "fd00::", uint8(4))
	f.Add("", "", "", uint8(2))
	f.Add("vxlocal/10.1.0.0/24", "x", "10.1.0.5/24", uint8(1))
	a := newAlloc(f, nil)

	f.Fuzz(func(t *testing.T, pool, sub, addr string, n uint8) {
		// The raw strings as PoolIDs: malformed ones must fail cleanly.
		a.RequestAddress(&api.RequestAddressRequest{PoolID: pool, Address: addr})
		a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: pool, Address: addr})
		a.ReleasePool(&api.ReleasePoolRequest{PoolID: pool})

		res, err := a.RequestPool(&api.RequestPoolRequest{
			AddressSpace: LocalSpace, Pool: pool, SubPool: sub, V6: strings.Contains(pool, ":"),
		})
		if err != nil {
			assertNoPools(t, a)
			return
		}
		pfx, err := netip.ParsePrefix(res.Pool)
		if err != nil || pfx != pfx.Masked() || res.PoolID != LocalSpace+"/"+res.Pool {
			t.Fatalf("bad pool response %+v", res)
		}
		rng := pfx
		if sub != "" {
			rng = netip.MustParsePrefix(sub).Masked()
		}
		var got []netip.Addr
		take := func(req *api.RequestAddressRequest, inRange bool) {
			req.PoolID = res.PoolID
			r, err := a.RequestAddress(req)
			if err != nil {
				return
			}
			ap, err := netip.ParsePrefix(r.Address)
			if err != nil || ap.Bits() != pfx.Bits() {
				t.Fatalf("bad address response %q for pool %s", r.Address, pfx)
			}
			ip := ap.Addr()
			if !pfx.Contains(ip) || (inRange && !rng.Contains(ip)) {
				t.Fatalf("%s handed out outside %s (range %s)", ip, pfx, rng)
			}
			if ip == pfx.Addr() || (ip.Is4() && ip == lastAddr(pfx)) {
				t.Fatalf("reserved address %s handed out from %s", ip, pfx)
			}
			if slices.Contains(got, ip) {
				t.Fatalf("%s handed out twice", ip)
			}
			got = append(got, ip)
		}
		if addr != "" {
			take(&api.RequestAddressRequest{Address: addr}, false)
		}
		take(&api.RequestAddressRequest{Options: map[string]string{optRequestAddressType: requestTypeGateway}}, false)
		for range n % 8 {
			take(&api.RequestAddressRequest{}, true)
		}
		if p := allocated(t, a, res.PoolID); len(p) != len(got) {
			t.Fatalf("%d persisted, %d handed out", len(p), len(got))
		}
		for _, ip := range got {
			release(t, a, res.PoolID, ip.String())
		}
		if p := allocated(t, a, res.PoolID); len(p) != 0 {
			t.Fatalf("left allocated after release: %v", p)
		}
		if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: res.PoolID}); err != nil {
			t.Fatal(err)
		}
		assertNoPools(t, a)
	})
}

func assertNoPools(t *testing.T, a *Allocator) {
	t.Helper()
	pools, err := a.Pools()
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 0 {
		t.Fatalf("pools leaked: %+v", pools)
	}
}

// BenchmarkRequestAddress allocates from a /16 that already holds 1000
// addresses; the release that keeps it at that level is not timed.
func BenchmarkRequestAddress(b *testing.B) {
	a := newAlloc(b, nil)
	id := mustPool(b, a, "10.1.0.0/16", "")
	var window []string
	for range 1000 {
		window = append(window, alloc(b, a, id, ""))
	}
	b.ResetTimer()
	for range b.N {
		window = append(window, alloc(b, a, id, ""))
		b.StopTimer()
		release(b, a, id, window[0])
		window = window[1:]
		b.StartTimer()
	}
}

// BenchmarkClaimNext is the selection alone, without the store or JSON, on
// a /16 that is half full.
func BenchmarkClaimNext(b *testing.B) {
	p := &Pool{Prefix: netip.MustParsePrefix("10.1.0.0/16")}
	for range 32768 {
		if _, err := p.claimNext(); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		a, err := p.claimNext()
		if err != nil {
			b.Fatal(err)
		}
		p.remove(a)
		p.Cursor = p.Cursor.Prev().Prev() // so the next walk steps over one allocated address
	}
}
