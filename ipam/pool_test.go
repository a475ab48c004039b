package ipam

import (
	"math"
	"net/netip"
	"testing"
)

func TestAddrMath(t *testing.T) {
	tests := []struct {
		pfx, last string
		size      uint64
	}{
		{"10.1.0.0/24", "10.1.0.255", 256},
		{"10.1.0.77/24", "10.1.0.255", 256},
		{"0.0.0.0/0", "255.255.255.255", 1 << 32},
		{"10.1.0.9/32", "10.1.0.9", 1},
		{"fd00::/64", "fd00::ffff:ffff:ffff:ffff", math.MaxUint64},
		{"fd00::/65", "fd00::7fff:ffff:ffff:ffff", 1 << 63},
		{"fd00::/120", "fd00::ff", 256},
		{"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", math.MaxUint64},
		{"fd00::1:0:0:0/80", "fd00::1:ffff:ffff:ffff", 1 << 48},
	}
	for _, tc := range tests {
		p := netip.MustParsePrefix(tc.pfx)
		last := lastAddr(p)
		if last.String() != tc.last {
			t.Errorf("lastAddr(%s) = %s, want %s", p, last, tc.last)
		}
		if got := rangeSize(p.Masked().Addr(), last); got != tc.size {
			t.Errorf("rangeSize(%s) = %d, want %d", p, got, tc.size)
		}
	}
	// The borrow from the low half.
	if d := distance(netip.MustParseAddr("fd00::ffff:ffff:ffff:ffff"), netip.MustParseAddr("fd00:0:0:1::1")); d != 2 {
		t.Errorf("distance across the 64-bit boundary = %d, want 2", d)
	}
}

// The walk steps over allocated addresses only: a long allocated run right
// after the cursor in a /8 is crossed in one call, and the wrap on a huge
// IPv6 range does not iterate over it.
func TestNextWalk(t *testing.T) {
	p := &Pool{Prefix: netip.MustParsePrefix("10.0.0.0/8")}
	a := netip.MustParseAddr("10.0.0.1")
	for range 5000 {
		p.add(a)
		a = a.Next()
	}
	got, err := p.claimNext()
	if err != nil || got != netip.MustParseAddr("10.0.19.137") {
		t.Fatalf("got %s, %v", got, err)
	}

	v6 := &Pool{Prefix: netip.MustParsePrefix("2001:db8::/32"), V6: true}
	last := lastAddr(v6.Prefix)
	if err := v6.claim(last); err != nil {
		t.Fatal(err)
	}
	v6.Cursor = last.Prev()
	if got, err := v6.claimNext(); err != nil || got != netip.MustParseAddr("2001:db8::1") {
		t.Fatalf("wrap on a /32: got %s, %v", got, err)
	}
}

func TestDecodeRestoresInvariants(t *testing.T) {
	b := []byte(`{"space":"vxlocal","pool":"10.1.0.0/24","subpool":"","v6":false,
		"allocated":["10.1.0.9","10.1.0.3","10.1.0.9","192.168.0.1"],"cursor":"10.1.0.3"}`)
	p, err := decodePool("k", b)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Allocated) != 2 || p.Allocated[0] != netip.MustParseAddr("10.1.0.3") {
		t.Fatalf("allocated %v", p.Allocated)
	}
	for _, bad := range []string{
		`{"pool":"10.1.0.1/24"}`,
		`{"pool":"10.1.0.0/24","v6":true}`,
		`{"pool":"10.1.0.0/24","subpool":"10.2.0.0/25"}`,
		`{"pool":""}`,
		`not json`,
	} {
		if _, err := decodePool("k", []byte(bad)); err == nil {
			t.Errorf("decodePool(%s): no error", bad)
		}
	}
}
