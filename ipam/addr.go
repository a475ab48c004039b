package ipam

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"strings"
)

// The few pieces of address arithmetic that net/netip does not offer.

// lastAddr returns the highest address of p (the IPv4 broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	b := p.Addr().As16()
	// As16 puts an IPv4 address in the last 4 bytes, so host bits start at
	// offset 96 for IPv4.
	first := p.Bits()
	if p.Addr().Is4() {
		first += 96
	}
	for i := first; i < 128; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		a = a.Unmap()
	}
	return a
}

// distance returns hi-lo for lo <= hi of one family, saturating at
// MaxUint64: IPv6 ranges can be far larger than any count we keep.
func distance(lo, hi netip.Addr) uint64 {
	l, h := lo.As16(), hi.As16()
	lh, ll := binary.BigEndian.Uint64(l[:8]), binary.BigEndian.Uint64(l[8:])
	hh, hl := binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint64(h[8:])
	if hl < ll {
		hh-- // borrow; cannot underflow because hi >= lo
	}
	if hh != lh {
		return math.MaxUint64
	}
	return hl - ll
}

// rangeSize is the number of addresses in [lo, hi], saturating.
func rangeSize(lo, hi netip.Addr) uint64 {
	d := distance(lo, hi)
	if d == math.MaxUint64 {
		return d
	}
	return d + 1
}

// parseAddr accepts "10.1.0.2" or "10.1.0.2/24" (dockerd and users send
// both forms); the prefix length, if any, is ignored.
func parseAddr(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("invalid address %q: %w", s, err)
		}
		return p.Addr(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("invalid address %q: %w", s, err)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("invalid address %q: zones are not allowed", s)
	}
	return a, nil
}

// parsePrefix parses a CIDR and returns it masked. IPv4-mapped IPv6
// prefixes are refused: they would silently mix the two families.
func parsePrefix(what, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid %s %q: %w", what, s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("invalid %s %q: IPv4-mapped IPv6 prefixes are not supported", what, s)
	}
	return p.Masked(), nil
}

// family names the address family for messages.
func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func minAddr(a, b netip.Addr) netip.Addr {
	if a.Compare(b) < 0 {
		return a
	}
	return b
}

// comparePrefix orders prefixes by address, then length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
