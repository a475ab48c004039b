package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/vxbridge/vxbridge/store"
)

func TestNewConfig(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "s.db"))
	both := map[string]store.Store{LocalSpace: st, GlobalSpace: st}
	tests := []struct {
		name string
		cfg  Config
		err  string
	}{
		{"defaults", Config{Spaces: both}, ""},
		{"missing global", Config{Spaces: map[string]store.Store{LocalSpace: st}}, `address space "vxglobal" has no store`},
		{"slash in name", Config{Spaces: map[string]store.Store{LocalSpace: st, GlobalSpace: st, "a/b": st}}, `invalid address space name "a/b"`},
		{"v6 in v4 list", Config{Spaces: both, DefaultV4: []DefaultPool{{netip.MustParsePrefix("fd00::/8"), 64}}}, "wrong address family"},
		{"unaligned start", Config{Spaces: both, DefaultV4: []DefaultPool{{netip.MustParsePrefix("10.0.1.0/8"), 16}}}, "start 10.0.1.0 is not aligned to /16"},
		{"aligned start", Config{Spaces: both, DefaultV4: []DefaultPool{{netip.MustParsePrefix("10.7.0.0/8"), 16}}}, ""},
		{"size too small", Config{Spaces: both, DefaultV4: []DefaultPool{{netip.MustParsePrefix("10.0.0.0/8"), 4}}}, "size must be between /8 and /30"},
		{"size too big", Config{Spaces: both, DefaultV6: []DefaultPool{{netip.MustParsePrefix("fd00::/8"), 129}}}, "size must be between"},
		{"pools too small", Config{Spaces: both, DefaultV6: []DefaultPool{{netip.MustParsePrefix("fd00::/8"), 127}}}, "size must be between /8 and /126"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want error containing %q", err, tc.err)
			}
		})
	}
}

func TestProtocolInfo(t *testing.T) {
	a := newAlloc(t, nil)
	caps, err := a.GetCapabilities()
	if err != nil || caps.RequiresMACAddress {
		t.Fatalf("capabilities %+v, %v", caps, err)
	}
	sp, err := a.GetDefaultAddressSpaces()
	if err != nil || sp.LocalDefaultAddressSpace != LocalSpace || sp.GlobalDefaultAddressSpace != GlobalSpace {
		t.Fatalf("spaces %+v, %v", sp, err)
	}
}

func TestAutoPools(t *testing.T) {
	tests := []struct {
		name     string
		host     []netip.Prefix
		explicit []string // created first, in the global space
		v6       bool
		want     []string // successive automatic pools
	}{
		{"docker defaults", nil, nil, false, []string{"172.17.0.0/16", "172.18.0.0/16", "172.19.0.0/16"}},
		{"skip host prefixes", prefixes("172.17.0.1/16", "172.19.3.0/24", "10.0.0.0/8"), nil, false,
			[]string{"172.18.0.0/16", "172.20.0.0/16"}},
		{"big host route skipped in one jump", prefixes("172.16.0.0/13"), nil, false, []string{"172.24.0.0/16"}},
		{"default route ignored", prefixes("0.0.0.0/0", "::/0"), nil, false, []string{"172.17.0.0/16"}},
		{"pools of other space", nil, []string{"172.17.5.0/24", "172.18.0.0/15"}, false,
			[]string{"172.20.0.0/16"}},
		{"into second default", prefixes("172.16.0.0/12"), nil, false, []string{"192.168.0.0/20", "192.168.16.0/20"}},
		{"ipv6", prefixes("fd76:7862::/64"), nil, true, []string{"fd76:7862:0:1::/64", "fd76:7862:0:2::/64"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newAlloc(t, tc.host)
			for _, p := range tc.explicit {
				if _, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: GlobalSpace, Pool: p}); err != nil {
					t.Fatal(err)
				}
			}
			for _, want := range tc.want {
				res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalSpace, V6: tc.v6})
				if err != nil {
					t.Fatal(err)
				}
				if res.Pool != want || res.PoolID != LocalSpace+"/"+want {
					t.Fatalf("got %s (%s), want %s", res.Pool, res.PoolID, want)
				}
			}
		})
	}
}

func TestAutoPoolsRunOut(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "s.db"))
	a, err := New(Config{
		Spaces:    map[string]store.Store{LocalSpace: st, GlobalSpace: st},
		DefaultV4: []DefaultPool{{netip.MustParsePrefix("10.9.0.0/23"), 24}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalSpace}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalSpace})
	wantErr(t, err, "no free IPv4 pool left in the default pools (10.9.0.0/23 in /24s): pass an explicit --subnet")
}

func TestHostPrefixesError(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "s.db"))
	boom := errors.New("netlink down")
	a, err := New(Config{
		Spaces:       map[string]store.Store{LocalSpace: st, GlobalSpace: st},
		HostPrefixes: func() ([]netip.Prefix, error) { return nil, boom },
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalSpace})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want it to wrap %v", err, boom)
	}
	// Allowing the overlap does not need the host's prefixes at all.
	_, err = a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalSpace, Pool: "10.1.0.0/24",
		Options: map[string]string{OptHostOverlap: "allow"}})
	if err != nil {
		t.Fatal(err)
	}
}

func TestExplicitPools(t *testing.T) {
	host := prefixes("192.168.1.7/24", "10.99.0.0/16")
	tests := []struct {
		name     string
		existing []string // local space
		req      api.RequestPoolRequest
		wantPool string
		err      string // exact, "" = success
	}{
		{"ok", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24"}, "10.1.0.0/24", ""},
		{"canonicalised", nil, api.RequestPoolRequest{Pool: "10.1.0.77/24"}, "10.1.0.0/24", ""},
		{"with subpool", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24", SubPool: "10.1.0.128/25"}, "10.1.0.0/24", ""},
		{"subpool = pool", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24", SubPool: "10.1.0.0/24"}, "10.1.0.0/24", ""},
		{"global space", []string{"10.2.0.0/16"}, api.RequestPoolRequest{AddressSpace: GlobalSpace, Pool: "10.1.0.0/16"}, "10.1.0.0/16", ""},
		{"ipv6", nil, api.RequestPoolRequest{Pool: "fd00:1::/64", V6: true}, "fd00:1::/64", ""},
		{"smallest ipv4", nil, api.RequestPoolRequest{Pool: "10.1.0.4/30"}, "10.1.0.4/30", ""},
		{"smallest ipv6", nil, api.RequestPoolRequest{Pool: "fd00:1::/126", V6: true}, "fd00:1::/126", ""},
		{"ipv4 /31", nil, api.RequestPoolRequest{Pool: "10.1.0.0/31"}, "",
			"pool 10.1.0.0/31 is too small: a network needs a gateway and at least one container address, so an IPv4 pool must be /30 or larger"},
		{"ipv4 /32", nil, api.RequestPoolRequest{Pool: "10.1.0.9/32"}, "",
			"pool 10.1.0.9/32 is too small: a network needs a gateway and at least one container address, so an IPv4 pool must be /30 or larger"},
		{"ipv6 /127", nil, api.RequestPoolRequest{Pool: "fd00:1::/127", V6: true}, "",
			"pool fd00:1::/127 is too small: a network needs a gateway and at least one container address, so an IPv6 pool must be /126 or larger"},
		{"ipv6 /128", nil, api.RequestPoolRequest{Pool: "fd00:1::1/128", V6: true}, "",
			"pool fd00:1::1/128 is too small: a network needs a gateway and at least one container address, so an IPv6 pool must be /126 or larger"},
		{"bigger over smaller", []string{"10.1.0.0/24"}, api.RequestPoolRequest{Pool: "10.1.0.0/16"}, "",
			"pool 10.1.0.0/16 overlaps pool 10.1.0.0/24 already in use"},
		{"smaller inside bigger", []string{"10.1.0.0/16"}, api.RequestPoolRequest{Pool: "10.1.7.0/24"}, "",
			"pool 10.1.7.0/24 overlaps pool 10.1.0.0/16 already in use"},
		{"same pool again", []string{"10.1.0.0/24"}, api.RequestPoolRequest{Pool: "10.1.0.0/24"}, "",
			"pool 10.1.0.0/24 overlaps pool 10.1.0.0/24 already in use"},
		{"overlap across spaces", []string{"10.1.0.0/24"}, api.RequestPoolRequest{AddressSpace: GlobalSpace, Pool: "10.1.0.0/23"}, "",
			"pool 10.1.0.0/23 overlaps pool 10.1.0.0/24 already in use"},
		{"host overlap refused", nil, api.RequestPoolRequest{Pool: "192.168.0.0/16"}, "",
			"pool 192.168.0.0/16 overlaps 192.168.1.0/24 in use on this host (set --ipam-opt vxbridge.host-overlap=allow to use it anyway)"},
		{"host overlap inside", nil, api.RequestPoolRequest{Pool: "10.99.3.0/24", Options: map[string]string{OptHostOverlap: "deny"}}, "",
			"pool 10.99.3.0/24 overlaps 10.99.0.0/16 in use on this host (set --ipam-opt vxbridge.host-overlap=allow to use it anyway)"},
		{"host overlap allowed", nil, api.RequestPoolRequest{Pool: "192.168.1.0/24", Options: map[string]string{OptHostOverlap: "allow"}}, "192.168.1.0/24", ""},
		{"bad option value", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24", Options: map[string]string{OptHostOverlap: "yes"}}, "",
			`invalid value "yes" for pool option vxbridge.host-overlap: want allow or deny`},
		{"unknown option", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24", Options: map[string]string{"colour": "blue"}}, "",
			`unknown pool option "colour"`},
		{"subpool outside", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24", SubPool: "10.1.1.0/25"}, "",
			"subpool 10.1.1.0/25 is not inside pool 10.1.0.0/24"},
		{"subpool bigger", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24", SubPool: "10.1.0.0/23"}, "",
			"subpool 10.1.0.0/23 is not inside pool 10.1.0.0/24"},
		{"subpool other family", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24", SubPool: "fd00::/120"}, "",
			"subpool fd00::/120 is not inside pool 10.1.0.0/24"},
		{"subpool without pool", nil, api.RequestPoolRequest{SubPool: "10.1.0.0/25"}, "",
			`subpool "10.1.0.0/25" needs an explicit pool`},
		{"bad pool", nil, api.RequestPoolRequest{Pool: "10.1.0.0/33"}, "",
			`invalid pool "10.1.0.0/33": netip.ParsePrefix("10.1.0.0/33"): prefix length out of range`},
		{"pool without length", nil, api.RequestPoolRequest{Pool: "10.1.0.0"}, "",
			`invalid pool "10.1.0.0": netip.ParsePrefix("10.1.0.0"): no '/'`},
		{"bad subpool", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24", SubPool: "x"}, "",
			`invalid subpool "x": netip.ParsePrefix("x"): no '/'`},
		{"mapped v6", nil, api.RequestPoolRequest{Pool: "::ffff:10.1.0.0/120", V6: true}, "",
			`invalid pool "::ffff:10.1.0.0/120": IPv4-mapped IPv6 prefixes are not supported`},
		{"v4 pool for v6", nil, api.RequestPoolRequest{Pool: "10.1.0.0/24", V6: true}, "",
			"pool 10.1.0.0/24 is not an IPv6 pool"},
		{"v6 pool for v4", nil, api.RequestPoolRequest{Pool: "fd00::/64"}, "",
			"pool fd00::/64 is not an IPv4 pool"},
		{"unknown space", nil, api.RequestPoolRequest{AddressSpace: "nowhere", Pool: "10.1.0.0/24"}, "",
			`unknown address space "nowhere"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newAlloc(t, host)
			for _, p := range tc.existing {
				mustPool(t, a, p, "")
			}
			req := tc.req
			if req.AddressSpace == "" {
				req.AddressSpace = LocalSpace
			}
			before, _ := a.Pools()
			res, err := a.RequestPool(&req)
			if tc.err != "" {
				wantErr(t, err, tc.err)
				if after, _ := a.Pools(); len(after) != len(before) {
					t.Fatalf("failed request left a pool behind: %v", after)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Pool != tc.wantPool || res.PoolID != req.AddressSpace+"/"+tc.wantPool {
				t.Fatalf("got %+v, want pool %s", res, tc.wantPool)
			}
		})
	}
}

func TestGateway(t *testing.T) {
	tests := []struct {
		name, pool, sub string
		pre             []string // specific addresses taken first
		want            string
		thenAuto        string // next automatic address after the gateway
	}{
		{"first usable", "10.1.0.0/24", "", nil, "10.1.0.1/24", "10.1.0.2/24"},
		{"of pool, not subpool", "10.1.0.0/24", "10.1.0.128/25", nil, "10.1.0.1/24", "10.1.0.128/24"},
		{"taken: next free", "10.1.0.0/24", "", []string{"10.1.0.1", "10.1.0.2"}, "10.1.0.3/24", "10.1.0.4/24"},
		{"ipv6 skips anycast", "fd00:1::/64", "", nil, "fd00:1::1/64", "fd00:1::2/64"},
		{"/30: one container beside it", "10.1.0.0/30", "", nil, "10.1.0.1/30", "10.1.0.2/30"},
		{"/126: one container beside it", "fd00::/126", "", nil, "fd00::1/126", "fd00::2/126"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newAlloc(t, nil)
			id := mustPool(t, a, tc.pool, tc.sub)
			for _, p := range tc.pre {
				alloc(t, a, id, p)
			}
			if got := gateway(t, a, id); got != tc.want {
				t.Fatalf("gateway %s, want %s", got, tc.want)
			}
			if got := alloc(t, a, id, ""); got != tc.thenAuto {
				t.Fatalf("next %s, want %s", got, tc.thenAuto)
			}
		})
	}
}

func TestSpecificAddress(t *testing.T) {
	tests := []struct {
		name, pool, addr string
		want             string
		err              string
	}{
		{"ok", "10.1.0.0/24", "10.1.0.5", "10.1.0.5/24", ""},
		{"cidr form", "10.1.0.0/24", "10.1.0.5/24", "10.1.0.5/24", ""},
		{"outside subpool is fine", "10.1.0.0/24", "10.1.0.3", "10.1.0.3/24", ""},
		{"duplicate", "10.1.0.0/24", "10.1.0.7", "", "address 10.1.0.7 is already allocated in pool 10.1.0.0/24"},
		{"out of pool", "10.1.0.0/24", "10.2.0.5", "", "address 10.2.0.5 is not in pool 10.1.0.0/24"},
		{"other family", "10.1.0.0/24", "fd00::5", "", "address fd00::5 is not in pool 10.1.0.0/24"},
		{"network", "10.1.0.0/24", "10.1.0.0", "", "address 10.1.0.0 is the network address of pool 10.1.0.0/24"},
		{"broadcast", "10.1.0.0/24", "10.1.0.255", "", "address 10.1.0.255 is the broadcast address of pool 10.1.0.0/24"},
		{"v6 anycast", "fd00:1::/64", "fd00:1::", "", "address fd00:1:: is the subnet-router anycast address of pool fd00:1::/64"},
		{"v6 last is fine", "fd00:1::/64", "fd00:1::ffff:ffff:ffff:ffff", "fd00:1::ffff:ffff:ffff:ffff/64", ""},
		{"malformed", "10.1.0.0/24", "10.1.0", "", `invalid address "10.1.0": ParseAddr("10.1.0"): IPv4 address too short`},
		{"zone", "fd00:1::/64", "fd00:1::1%eth0", "", `invalid address "fd00:1::1%eth0": zones are not allowed`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newAlloc(t, nil)
			sub := ""
			if tc.pool == "10.1.0.0/24" {
				sub = "10.1.0.128/25"
			}
			id := mustPool(t, a, tc.pool, sub)
			if tc.name == "duplicate" {
				alloc(t, a, id, tc.addr)
			}
			before := allocated(t, a, id)
			res, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: id, Address: tc.addr,
				Options: map[string]string{"com.docker.network.endpoint.macaddress": "02:42:ac:11:00:02"}})
			if tc.err != "" {
				wantErr(t, err, tc.err)
				if after := allocated(t, a, id); !slices.Equal(before, after) {
					t.Fatalf("failed request changed state: %v -> %v", before, after)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Address != tc.want {
				t.Fatalf("got %s, want %s", res.Address, tc.want)
			}
		})
	}
}

func TestExhaustion(t *testing.T) {
	a := newAlloc(t, nil)
	id := mustPool(t, a, "10.1.0.0/29", "")
	gateway(t, a, id)
	var got []string
	for range 5 {
		got = append(got, alloc(t, a, id, ""))
	}
	want := []string{"10.1.0.2/29", "10.1.0.3/29", "10.1.0.4/29", "10.1.0.5/29", "10.1.0.6/29"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	_, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: id})
	wantErr(t, err, "pool 10.1.0.0/29 is exhausted (6 of 6 addresses allocated)")
	_, err = a.RequestAddress(&api.RequestAddressRequest{PoolID: id,
		Options: map[string]string{optRequestAddressType: requestTypeGateway}})
	wantErr(t, err, "pool 10.1.0.0/29 is exhausted (6 of 6 addresses allocated)")

	// A subpool runs out on its own count, with addresses left in the pool.
	id = mustPool(t, a, "10.2.0.0/24", "10.2.0.8/30")
	gateway(t, a, id) // 10.2.0.1, outside the subpool: not counted
	for range 4 {
		alloc(t, a, id, "")
	}
	_, err = a.RequestAddress(&api.RequestAddressRequest{PoolID: id})
	wantErr(t, err, "pool 10.2.0.0/24 (range 10.2.0.8/30) is exhausted (4 of 4 addresses allocated)")

	// An IPv6 /128 on the anycast address has nothing to give.
	id = mustPool(t, a, "fd00:2::/64", "fd00:2::/128")
	_, err = a.RequestAddress(&api.RequestAddressRequest{PoolID: id})
	wantErr(t, err, "pool fd00:2::/64 (range fd00:2::/128) is exhausted (0 of 0 addresses allocated)")
}

func TestSerialAndWrap(t *testing.T) {
	a := newAlloc(t, nil)
	id := mustPool(t, a, "10.1.0.0/29", "")
	gateway(t, a, id)         // .1
	a2 := alloc(t, a, id, "") // .2
	alloc(t, a, id, "")       // .3
	release(t, a, id, a2)
	// .2 is free but the cursor is past it: serial allocation goes on.
	allocInOrder(t, a, id, "10.1.0.4/29", "10.1.0.5/29", "10.1.0.6/29", "10.1.0.2/29")
	// Free two in the middle: the cursor is at .2, so .3 then .5 come next.
	release(t, a, id, "10.1.0.3")
	release(t, a, id, "10.1.0.5/29")
	allocInOrder(t, a, id, "10.1.0.3/29", "10.1.0.5/29")
}

func TestWrapInSubpool(t *testing.T) {
	a := newAlloc(t, nil)
	id := mustPool(t, a, "10.1.0.0/24", "10.1.0.252/30") // .252-.254 usable, .255 broadcast
	allocInOrder(t, a, id, "10.1.0.252/24", "10.1.0.253/24", "10.1.0.254/24")
	release(t, a, id, "10.1.0.253")
	allocInOrder(t, a, id, "10.1.0.253/24") // after the wrap
}

func TestIPv6(t *testing.T) {
	a := newAlloc(t, nil)
	res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalSpace, V6: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Pool != "fd76:7862::/64" {
		t.Fatalf("auto v6 pool %s", res.Pool)
	}
	id := res.PoolID
	if got := gateway(t, a, id); got != "fd76:7862::1/64" {
		t.Fatalf("gateway %s", got)
	}
	for i := 2; i < 20; i++ {
		if got, want := alloc(t, a, id, ""), fmt.Sprintf("fd76:7862::%x/64", i); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	alloc(t, a, id, "fd76:7862::ffff:ffff:ffff:fffe")
	release(t, a, id, "fd76:7862::5/64")
	if got := len(allocated(t, a, id)); got != 19 {
		t.Fatalf("%d allocated, want 19", got)
	}
	// A tiny IPv6 range wraps around like IPv4, skipping the anycast address.
	id = mustPool(t, a, "fd00:9::/126", "")
	allocInOrder(t, a, id, "fd00:9::1/126", "fd00:9::2/126", "fd00:9::3/126")
	release(t, a, id, "fd00:9::2")
	allocInOrder(t, a, id, "fd00:9::2/126")
}

func TestRelease(t *testing.T) {
	a := newAlloc(t, nil)
	id := mustPool(t, a, "10.1.0.0/24", "")
	addr := alloc(t, a, id, "")
	release(t, a, id, addr)
	release(t, a, id, addr)                          // twice: no-op
	release(t, a, id, "10.1.0.200")                  // never allocated
	release(t, a, id, "10.9.9.9")                    // not even in the pool
	release(t, a, "vxlocal/10.7.0.0/16", "10.7.0.1") // unknown pool
	if n := len(allocated(t, a, id)); n != 0 {
		t.Fatalf("%d addresses left", n)
	}
	if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if pools, _ := a.Pools(); len(pools) != 0 {
		t.Fatalf("pools left: %+v", pools)
	}
	_, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: id})
	wantErr(t, err, "pool vxlocal/10.1.0.0/24 does not exist")
	// The prefix is free again.
	mustPool(t, a, "10.1.0.0/16", "")
}

func TestMalformedInput(t *testing.T) {
	a := newAlloc(t, nil)
	good := mustPool(t, a, "10.1.0.0/24", "")
	ids := map[string]string{
		"":                     `malformed pool ID "": want <space>/<cidr>`,
		"vxlocal":              `malformed pool ID "vxlocal": want <space>/<cidr>`,
		"/10.1.0.0/24":         `malformed pool ID "/10.1.0.0/24": want <space>/<cidr>`,
		"vxlocal/":             `malformed pool ID "vxlocal/": netip.ParsePrefix(""): no '/'`,
		"vxlocal/10.1.0.0":     `malformed pool ID "vxlocal/10.1.0.0": netip.ParsePrefix("10.1.0.0"): no '/'`,
		"vxlocal/10.1.0.1/24":  `malformed pool ID "vxlocal/10.1.0.1/24": prefix is not canonical`,
		"vxlocal/garbage/8":    `malformed pool ID "vxlocal/garbage/8": netip.ParsePrefix("garbage/8"): ParseAddr("garbage"): unable to parse IP`,
		"nowhere/10.1.0.0/24":  `pool nowhere/10.1.0.0/24: unknown address space "nowhere"`,
		"vxlocal/10.1.0.0/24x": `malformed pool ID "vxlocal/10.1.0.0/24x": netip.ParsePrefix("10.1.0.0/24x"): bad bits after slash: "24x"`,
	}
	for id, want := range ids {
		_, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: id})
		wantErr(t, err, want)
		wantErr(t, a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: id, Address: "10.1.0.2"}), want)
		wantErr(t, a.ReleasePool(&api.ReleasePoolRequest{PoolID: id}), want)
	}
	for _, addr := range []string{"x", "10.1.0.256", "10.1.0.2/", "10.1.0.2/40", "::g", " 10.1.0.2"} {
		if _, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: good, Address: addr}); err == nil ||
			!strings.Contains(err.Error(), fmt.Sprintf("invalid address %q", addr)) {
			t.Errorf("RequestAddress(%q): %v", addr, err)
		}
		if err := a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: good, Address: addr}); err == nil {
			t.Errorf("ReleaseAddress(%q): no error", addr)
		}
	}
	if err := a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: good}); err == nil {
		t.Error("ReleaseAddress with no address: no error")
	}
	if n := len(allocated(t, a, good)); n != 0 {
		t.Fatalf("malformed requests allocated %d addresses", n)
	}
}

// TestPersistence proves allocations are durable before they are returned:
// a new Allocator on the reopened file carries on without duplicates.
func TestPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st := openStore(t, path)
	a := allocOn(t, st, nil)
	id := mustPool(t, a, "10.1.0.0/24", "")
	gateway(t, a, id)
	seen := map[string]bool{}
	for range 10 {
		seen[alloc(t, a, id, "")] = true
	}
	release(t, a, id, "10.1.0.3")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	b := allocOn(t, openStore(t, path), nil)
	pools, err := b.Pools()
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 1 || pools[0].ID() != id || len(pools[0].Allocated) != 10 || pools[0].Cursor != netip.MustParseAddr("10.1.0.11") {
		t.Fatalf("reloaded %+v", pools)
	}
	got := alloc(t, b, id, "")
	if got != "10.1.0.12/24" || seen[got] {
		t.Fatalf("after reopen got %s", got)
	}
	if _, err := b.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalSpace, Pool: "10.1.0.0/16"}); err == nil {
		t.Fatal("reopened allocator forgot the pool")
	}
}

func TestConcurrentAddresses(t *testing.T) {
	a := newAlloc(t, nil)
	id := mustPool(t, a, "10.1.0.0/24", "")
	const workers, each = 8, 25
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		got  = map[string]bool{}
		errs []error
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				res, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: id})
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if got[res.Address] {
					errs = append(errs, fmt.Errorf("duplicate %s", res.Address))
				} else {
					got[res.Address] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if len(got) != workers*each || len(allocated(t, a, id)) != workers*each {
		t.Fatalf("%d distinct, %d persisted, want %d", len(got), len(allocated(t, a, id)), workers*each)
	}
}

func TestConcurrentPools(t *testing.T) {
	a := newAlloc(t, prefixes("172.18.0.0/16"))
	const workers = 8
	var wg sync.WaitGroup
	res := make([]*api.RequestPoolResponse, workers)
	errs := make([]error, workers)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			space := LocalSpace
			if i%2 == 1 {
				space = GlobalSpace
			}
			res[i], errs[i] = a.RequestPool(&api.RequestPoolRequest{AddressSpace: space})
		}()
	}
	wg.Wait()
	var got []netip.Prefix
	for i := range workers {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		p := netip.MustParsePrefix(res[i].Pool)
		if q, hit := overlapping(p, got); hit {
			t.Fatalf("pools %s and %s overlap", p, q)
		}
		if p == netip.MustParsePrefix("172.18.0.0/16") {
			t.Fatalf("got host prefix %s", p)
		}
		got = append(got, p)
	}
	if pools, _ := a.Pools(); len(pools) != workers {
		t.Fatalf("%d pools persisted, want %d", len(pools), workers)
	}
}

// hidingStore hides one key from List, as if another host on a shared
// store created that pool just after we listed.
type hidingStore struct {
	store.Store
	hide string
}

func (h hidingStore) List(prefix string) (map[string][]byte, error) {
	kv, err := h.Store.List(prefix)
	delete(kv, h.hide)
	return kv, err
}

// An automatic request whose chosen key turns out to be taken moves on to
// the next candidate instead of failing or overwriting the record.
func TestAutoPoolKeyTaken(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "s.db"))
	taken := poolKey(LocalSpace, netip.MustParsePrefix("172.17.0.0/16"))
	theirs := []byte(`{"space":"vxlocal","pool":"172.17.0.0/16","subpool":"","v6":false,"allocated":["172.17.0.9"],"cursor":""}`)
	if err := st.Update(taken, func([]byte) ([]byte, error) { return theirs, nil }); err != nil {
		t.Fatal(err)
	}
	a := allocOn(t, hidingStore{st, taken}, nil)
	res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalSpace})
	if err != nil {
		t.Fatal(err)
	}
	if res.Pool != "172.18.0.0/16" {
		t.Fatalf("got %s, want 172.18.0.0/16", res.Pool)
	}
	if b, _ := st.Get(taken); string(b) != string(theirs) {
		t.Fatalf("existing record overwritten: %s", b)
	}
	// An explicit request for the hidden pool fails on the key instead.
	_, err = a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalSpace, Pool: "172.17.0.0/16"})
	if !errors.Is(err, errPoolExists) {
		t.Fatalf("got %v, want errPoolExists", err)
	}
}

func TestPoolsRejectsCorruptRecord(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "s.db"))
	a := allocOn(t, st, nil)
	key := poolKey(LocalSpace, netip.MustParsePrefix("10.0.0.0/24"))
	if err := st.Update(key, func([]byte) ([]byte, error) { return []byte(`{"pool":"nope"}`), nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Pools(); err == nil || !strings.Contains(err.Error(), key) {
		t.Fatalf("got %v, want an error naming %s", err, key)
	}
}

func TestStoreLayout(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "s.db"))
	a := allocOn(t, st, nil)
	mustPool(t, a, "fd00:1::/64", "")
	_, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: GlobalSpace, Pool: "10.1.0.0/24",
		SubPool: "10.1.0.0/25", Options: map[string]string{OptHostOverlap: "allow"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"ipam/vxlocal/pools/fd00:1::_64", "ipam/vxglobal/pools/10.1.0.0_24"} {
		if _, err := st.Get(key); err != nil {
			t.Fatalf("key %s: %v", key, err)
		}
	}
	b, _ := st.Get("ipam/vxglobal/pools/10.1.0.0_24")
	p, err := decodePool("k", b)
	if err != nil {
		t.Fatal(err)
	}
	if p.SubPool != netip.MustParsePrefix("10.1.0.0/25") || p.V6 || p.Options[OptHostOverlap] != "allow" {
		t.Fatalf("record %s", b)
	}
}

// The pool remembers which address is its gateway: dockerd does not show
// it for --subnet without --gateway, and reconciliation must not take it.
func TestPoolRecordsItsGateway(t *testing.T) {
	a := newAlloc(t, nil)
	id := mustPool(t, a, "10.3.0.0/24", "")
	gw := gateway(t, a, id)
	alloc(t, a, id, "")
	pools, err := a.Pools()
	if err != nil || len(pools) != 1 || pools[0].Gateway.String()+"/24" != gw {
		t.Fatalf("pool gateway after request: %+v, %v; want %s", pools, err, gw)
	}
	release(t, a, id, gw)
	if pools, _ := a.Pools(); pools[0].Gateway.IsValid() {
		t.Fatalf("gateway %s still recorded after release", pools[0].Gateway)
	}
}
