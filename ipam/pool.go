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
	if !p.Prefix.Contains(a) {
		return fmt.Errorf("address %s is not in pool %s", a, p.Prefix)
	}
	if why := p.reservedReason(a); why != "" {
		return fmt.Errorf("address %s is the %s of pool %s", a, why, p.Prefix)
	}
	if p.isAllocated(a) {
		return fmt.Errorf("address %s is already allocated in pool %s", a, p.Prefix)
	}
	p.add(a)
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
// Exhaustion is decided from counts first, so the walk is bounded by the
// number of allocated addresses it steps over (plus the one wrap).
func (p *Pool) next(r netip.Prefix, cursor netip.Addr) (netip.Addr, error) {
	lo, hi, ok := p.usable(r)
	if !ok {
		return netip.Addr{}, p.exhausted(r, 0, 0)
	}
	size := rangeSize(lo, hi)
	first, _ := slices.BinarySearchFunc(p.Allocated, lo, netip.Addr.Compare)
	end, found := slices.BinarySearchFunc(p.Allocated, hi, netip.Addr.Compare)
	if found {
		end++
	}
	if used := uint64(end - first); used >= size {
		return netip.Addr{}, p.exhausted(r, used, size)
	}

	cand := lo
	if cursor.IsValid() && cursor.Compare(lo) >= 0 && cursor.Compare(hi) < 0 {
		cand = cursor.Next()
	}
	i, _ := slices.BinarySearchFunc(p.Allocated, cand, netip.Addr.Compare)
	for i < end && p.Allocated[i] == cand {
		i++
		if cand == hi {
			cand, i = lo, first
			continue
		}
		cand = cand.Next()
	}
	return cand, nil
}

func (p *Pool) exhausted(r netip.Prefix, used, size uint64) error {
	what := "pool " + p.Prefix.String()
	if r != p.Prefix {
		what += " (range " + r.String() + ")"
	}
	return fmt.Errorf("%s is exhausted (%d of %d addresses allocated)", what, used, size)
}
