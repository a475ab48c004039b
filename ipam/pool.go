package ipam

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Pool is the persisted record of one pool, stored as JSON under
// "ipam/<space>/pools/<prefix with '/' as '_'>".
type Pool struct {
	Space  string       `json:"space"`
	Prefix netip.Prefix `json:"pool"`
	// SubPool is the --ip-range that automatic addresses come from; the
	// zero Prefix when there is none (the whole pool is used).
	SubPool netip.Prefix `json:"subpool"`
	V6      bool         `json:"v6"`
	// Allocated is kept sorted so that lookups and the walk in next are
	// binary searches and short runs, never scans of the address range.
	Allocated []netip.Addr `json:"allocated"`
	// Cursor is the last address handed out automatically; the next one
	// starts after it so released addresses are not reused at once.
	Cursor netip.Addr `json:"cursor"`
	// Gateway is the address dockerd asked for as the network's gateway:
	// dockerd does not always show it (not for --subnet without
	// --gateway), so reconciliation needs it from here.
	Gateway netip.Addr        `json:"gateway"`
	Options map[string]string `json:"options,omitempty"`
	// Overlay names the overlay network this pool is this host's instance
	// of (BindOverlay); "" for a pool of this host alone. Addresses of a
	// bound pool are unique across the cluster: automatic and --ip
	// addresses come only from Blocks.
	Overlay string `json:"overlay,omitempty"`
	// Blocks are the blocks of a bound pool that this host holds in the
	// cluster store (see blocks.go), sorted.
	Blocks []netip.Prefix `json:"blocks,omitempty"`
}

// ID is the PoolID handed to dockerd: "<space>/<prefix>".
func (p *Pool) ID() string { return poolID(p.Space, p.Prefix) }

func poolID(space string, pfx netip.Prefix) string { return space + "/" + pfx.String() }

// parsePoolID splits a PoolID back into space and prefix. Only canonical
// IDs, as we hand out, are accepted.
func parsePoolID(id string) (string, netip.Prefix, error) {
	space, cidr, ok := strings.Cut(id, "/")
	if !ok || space == "" {
		return "", netip.Prefix{}, fmt.Errorf("malformed pool ID %q: want <space>/<cidr>", id)
	}
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		return "", netip.Prefix{}, fmt.Errorf("malformed pool ID %q: %w", id, err)
	}
	if pfx != pfx.Masked() || pfx.Addr().Is4In6() {
		return "", netip.Prefix{}, fmt.Errorf("malformed pool ID %q: prefix is not canonical", id)
	}
	return space, pfx, nil
}

func poolsPrefix(space string) string { return "ipam/" + space + "/pools/" }

func poolKey(space string, pfx netip.Prefix) string {
	return poolsPrefix(space) + strings.ReplaceAll(pfx.String(), "/", "_")
}

func (p *Pool) encode() ([]byte, error) { return json.Marshal(p) }

// decodePool parses a stored record and restores the invariants the
// selection code relies on, so a hand-edited record cannot make it loop.
func decodePool(key string, b []byte) (*Pool, error) {
	var p Pool
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decode pool record %s: %w", key, err)
	}
	if !p.Prefix.IsValid() || p.Prefix != p.Prefix.Masked() || p.Prefix.Addr().Is6() != p.V6 {
		return nil, fmt.Errorf("decode pool record %s: bad pool %q", key, p.Prefix)
	}
	if p.SubPool.IsValid() && (p.SubPool.Bits() < p.Prefix.Bits() || !p.Prefix.Contains(p.SubPool.Addr())) {
		return nil, fmt.Errorf("decode pool record %s: subpool %s outside pool %s", key, p.SubPool, p.Prefix)
	}
	p.Allocated = slices.DeleteFunc(p.Allocated, func(a netip.Addr) bool { return !p.Prefix.Contains(a) })
	slices.SortFunc(p.Allocated, netip.Addr.Compare)
	p.Allocated = slices.Compact(p.Allocated)
	p.Blocks = slices.DeleteFunc(p.Blocks, func(b netip.Prefix) bool {
		return !b.IsValid() || b != b.Masked() || b.Bits() < p.Prefix.Bits() || !p.Prefix.Contains(b.Addr())
	})
	slices.SortFunc(p.Blocks, comparePrefix)
	p.Blocks = slices.Compact(p.Blocks)
	return &p, nil
}

// longestPool is the longest prefix a pool may have: one that holds a
// gateway and at least one container besides its reserved addresses (see
// reservedReason), an IPv4 /30 or an IPv6 /126.
func longestPool(v6 bool) int {
	if v6 {
		return 126
	}
	return 30
}

// reservedReason says why a is never handed out, or "" if it may be.
func (p *Pool) reservedReason(a netip.Addr) string {
	switch {
	case a == p.Prefix.Addr() && p.V6:
		return "subnet-router anycast address"
	case a == p.Prefix.Addr():
		return "network address"
	case !p.V6 && a == lastAddr(p.Prefix):
		return "broadcast address"
	}
	return ""
}

// usable returns the first and last assignable address of r (the pool or
// its subpool). Reserved addresses sit only at the pool's ends, so trimming
// the ends leaves a contiguous range with nothing reserved inside. ok is
// false when nothing is left (e.g. an IPv6 /128 subpool on the anycast).
func (p *Pool) usable(r netip.Prefix) (lo, hi netip.Addr, ok bool) {
	lo, hi = r.Addr(), lastAddr(r)
	if p.reservedReason(lo) != "" {
		lo = lo.Next()
	}
	if p.reservedReason(hi) != "" {
		hi = hi.Prev()
	}
	if !lo.IsValid() || !hi.IsValid() || lo.Compare(hi) > 0 {
		return lo, hi, false
	}
	return lo, hi, true
}

// autoRange is where automatic addresses come from.
func (p *Pool) autoRange() netip.Prefix {
	if p.SubPool.IsValid() {
		return p.SubPool
	}
	return p.Prefix
}

func (p *Pool) isAllocated(a netip.Addr) bool {
	_, found := slices.BinarySearchFunc(p.Allocated, a, netip.Addr.Compare)
	return found
}

func (p *Pool) add(a netip.Addr) {
	i, found := slices.BinarySearchFunc(p.Allocated, a, netip.Addr.Compare)
	if !found {
		p.Allocated = slices.Insert(p.Allocated, i, a)
	}
}

// remove deletes a and reports whether it was allocated.
func (p *Pool) remove(a netip.Addr) bool {
	i, found := slices.BinarySearchFunc(p.Allocated, a, netip.Addr.Compare)
	if found {
		p.Allocated = slices.Delete(p.Allocated, i, i+1)
	}
	return found
}

// claim marks a specific address (--ip, --gateway, --aux-address).
func (p *Pool) claim(a netip.Addr) error {
	if err := p.claimable(a); err != nil {
		return err
	}
	p.add(a)
	return nil
}

// claimable says why a cannot be claimed, or nil if it can.
func (p *Pool) claimable(a netip.Addr) error {
	if !p.Prefix.Contains(a) {
		return fmt.Errorf("address %s is not in pool %s", a, p.Prefix)
	}
	if why := p.reservedReason(a); why != "" {
		return fmt.Errorf("address %s is the %s of pool %s", a, why, p.Prefix)
	}
	if p.isAllocated(a) {
		return fmt.Errorf("address %s is already allocated in pool %s", a, p.Prefix)
	}
	return nil
}

// claimGateway takes the first usable address of the whole pool (not of
// the subpool, as users expect x.x.x.1 for a gateway) or the next free one.
// The cursor is left alone: the gateway is not part of the serial sequence.
func (p *Pool) claimGateway() (netip.Addr, error) {
	a, err := p.next(p.Prefix, netip.Addr{})
	if err != nil {
		return netip.Addr{}, err
	}
	p.add(a)
	return a, nil
}

// claimNext hands out the next free address after the cursor.
func (p *Pool) claimNext() (netip.Addr, error) {
	a, err := p.next(p.autoRange(), p.Cursor)
	if err != nil {
		return netip.Addr{}, err
	}
	p.add(a)
	p.Cursor = a
	return a, nil
}

// next finds the first free address in r after cursor, wrapping around.
func (p *Pool) next(r netip.Prefix, cursor netip.Addr) (netip.Addr, error) {
	lo, hi, ok := p.usable(r)
	if !ok {
		return netip.Addr{}, p.exhausted(r, 0, 0)
	}
	if a, ok := p.nextIn([]addrRange{{lo, hi}}, cursor); ok {
		return a, nil
	}
	return netip.Addr{}, p.exhausted(r, p.countIn(lo, hi), rangeSize(lo, hi))
}

// addrRange is the addresses from lo to hi, both included.
type addrRange struct{ lo, hi netip.Addr }

// nextIn finds the first free address after cursor in ranges (sorted,
// disjoint), wrapping around to the first range and up to the cursor.
func (p *Pool) nextIn(ranges []addrRange, cursor netip.Addr) (netip.Addr, bool) {
	for _, r := range ranges {
		lo := r.lo
		if cursor.IsValid() && cursor.Compare(lo) >= 0 {
			if cursor.Compare(r.hi) >= 0 {
				continue
			}
			lo = cursor.Next()
		}
		if a, ok := p.freeIn(lo, r.hi); ok {
			return a, true
		}
	}
	if !cursor.IsValid() {
		return netip.Addr{}, false
	}
	for _, r := range ranges {
		if r.lo.Compare(cursor) > 0 {
			break
		}
		if a, ok := p.freeIn(r.lo, minAddr(r.hi, cursor)); ok {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// freeIn finds the first free address in [lo, hi]. Fullness is decided
// from counts first, so the walk is bounded by the number of allocated
// addresses it steps over, never the size of the range.
func (p *Pool) freeIn(lo, hi netip.Addr) (netip.Addr, bool) {
	first, end := p.allocatedIn(lo, hi)
	if uint64(end-first) >= rangeSize(lo, hi) {
		return netip.Addr{}, false
	}
	cand := lo
	for i := first; i < end && p.Allocated[i] == cand; i++ {
		cand = cand.Next()
	}
	return cand, true
}

// allocatedIn returns the indexes of Allocated that lie in [lo, hi]:
// Allocated[first:end].
func (p *Pool) allocatedIn(lo, hi netip.Addr) (first, end int) {
	first, _ = slices.BinarySearchFunc(p.Allocated, lo, netip.Addr.Compare)
	end, found := slices.BinarySearchFunc(p.Allocated, hi, netip.Addr.Compare)
	if found {
		end++
	}
	return first, end
}

// countIn is the number of allocated addresses in [lo, hi].
func (p *Pool) countIn(lo, hi netip.Addr) uint64 {
	first, end := p.allocatedIn(lo, hi)
	return uint64(end - first)
}

func (p *Pool) exhausted(r netip.Prefix, used, size uint64) error {
	what := "pool " + p.Prefix.String()
	if r != p.Prefix {
		what += " (range " + r.String() + ")"
	}
	return fmt.Errorf("%s is exhausted (%d of %d addresses allocated)", what, used, size)
}
