package ipam

import (
	"fmt"
	"net/netip"
	"strings"
)

// DefaultPool is a block that automatic pools are carved from: Base split
// into pools of prefix length Size. Base may carry host bits: carving then
// starts at its address, so Docker's "172.17.0.0/12" yields 172.17.0.0/16
// up to 172.31.0.0/16 and leaves 172.16.0.0/16 alone, as Docker does.
type DefaultPool struct {
	Base netip.Prefix
	Size int
}

func (d DefaultPool) String() string { return fmt.Sprintf("%s in /%ds", d.Base, d.Size) }

// Docker's own defaults for IPv4, so users get familiar addresses; a ULA
// block for IPv6 ("vx" = 0x76 0x78, "b" = 0x62).
var (
	defaultV4 = []DefaultPool{
		{Base: netip.MustParsePrefix("172.17.0.0/12"), Size: 16},
		{Base: netip.MustParsePrefix("192.168.0.0/16"), Size: 20},
	}
	defaultV6 = []DefaultPool{
		{Base: netip.MustParsePrefix("fd76:7862::/32"), Size: 64},
	}
)

// checkDefaults validates a configured list of default pools of one family.
func checkDefaults(list []DefaultPool, v6 bool) error {
	for _, d := range list {
		if !d.Base.IsValid() {
			return fmt.Errorf("default %s pool %v: invalid base", family(v6), d)
		}
		if d.Base.Addr().Is6() != v6 || d.Base.Addr().Is4In6() {
			return fmt.Errorf("default %s pool %v: wrong address family", family(v6), d)
		}
		if d.Size < d.Base.Bits() || d.Size > longestPool(v6) {
			return fmt.Errorf("default %s pool %v: size must be between /%d and /%d", family(v6), d, d.Base.Bits(), longestPool(v6))
		}
		if start := netip.PrefixFrom(d.Base.Addr(), d.Size); start != start.Masked() {
			return fmt.Errorf("default %s pool %v: start %s is not aligned to /%d", family(v6), d, d.Base.Addr(), d.Size)
		}
	}
	return nil
}

// firstFree returns the first pool of the default list that overlaps none
// of used. Instead of stepping through every candidate (fd76:7862::/32 has
// 2^32 of them) it jumps past the blocker it hit, so the cost grows with the
// number of blockers, not with the size of the defaults.
func firstFree(defaults []DefaultPool, used []netip.Prefix) (netip.Prefix, bool) {
	for _, d := range defaults {
		cand := netip.PrefixFrom(d.Base.Addr(), d.Size)
		for {
			blocker, hit := overlapping(cand, used)
			if !hit {
				return cand, true
			}
			// The block after whichever ends later: cand (blocker inside
			// it) or blocker (cand inside it). Both ends are aligned to the
			// candidate size, so the next address starts a candidate.
			end := lastAddr(cand)
			if be := lastAddr(blocker); be.Compare(end) > 0 {
				end = be
			}
			next := end.Next()
			if !next.IsValid() || !d.Base.Masked().Contains(next) {
				break
			}
			cand = netip.PrefixFrom(next, d.Size)
		}
	}
	return netip.Prefix{}, false
}

// overlapping returns the first prefix of list that overlaps p.
func overlapping(p netip.Prefix, list []netip.Prefix) (netip.Prefix, bool) {
	for _, q := range list {
		if p.Overlaps(q) {
			return q, true
		}
	}
	return netip.Prefix{}, false
}

func describeDefaults(list []DefaultPool) string {
	s := make([]string, len(list))
	for i, d := range list {
		s[i] = d.String()
	}
	return strings.Join(s, ", ")
}
