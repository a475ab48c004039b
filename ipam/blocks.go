package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strings"

	"github.com/vxbridge/vxbridge/store"
)

// Cluster-wide addresses, the way Calico does it: the addresses of an
// overlay's pool are cut into blocks of 64; a host claims a block in the
// cluster store (one key per block, created if absent) and then hands out
// its addresses locally, recording them in its own pool record. So a
// `docker run` costs no cluster round trip while this host's blocks have a
// free address, and a claim (a list and a create) once per 64 addresses;
// no key is written by more than one host. A block stays its host's until
// the host releases the pool, or an operator removes a dead host
// (ReleaseHostBlocks): a host that was only cut off and comes back must
// not find its addresses handed out again.
//
// Every host carves the same blocks: the grid is laid on the pool's
// prefix (not on its --ip-range), so an --ip outside the range still has
// exactly one block.

// Block sizes: 64 addresses in both families (IPv4 /26, IPv6 /122); a
// pool smaller than that is one block.
const (
	blockBits4 = 26
	blockBits6 = 122
)

// blockRecord is the value of a block's key in the cluster store.
type blockRecord struct {
	Host string `json:"host"`
}

const overlaysPrefix = "ipam/overlays/"

// blocksPrefix is where the blocks of an overlay live in the cluster store.
func blocksPrefix(overlay string) string { return overlaysPrefix + overlay + "/blocks/" }

// blockKey is "ipam/overlays/<overlay>/blocks/<block with '/' as '_'>".
func blockKey(overlay string, b netip.Prefix) string {
	return blocksPrefix(overlay) + strings.ReplaceAll(b.String(), "/", "_")
}

// parseBlockKey is the inverse of blockKey; ok is false for any other key.
func parseBlockKey(key string) (overlay string, b netip.Prefix, ok bool) {
	rest, ok := strings.CutPrefix(key, overlaysPrefix)
	if !ok {
		return "", netip.Prefix{}, false
	}
	overlay, cidr, ok := strings.Cut(rest, "/blocks/")
	if !ok || overlay == "" || strings.Contains(overlay, "/") {
		return "", netip.Prefix{}, false
	}
	b, err := netip.ParsePrefix(strings.Replace(cidr, "_", "/", 1))
	if err != nil || b != b.Masked() {
		return "", netip.Prefix{}, false
	}
	return overlay, b, true
}

// blockHolder reads a block key's value.
func blockHolder(key string, val []byte) (string, error) {
	var r blockRecord
	if err := json.Unmarshal(val, &r); err != nil || r.Host == "" {
		return "", fmt.Errorf("bad block record %s: %q", key, val)
	}
	return r.Host, nil
}

// checkName refuses names that would break the key layout.
func checkName(what, name string) error {
	if name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("invalid %s name %q: want a non-empty name without '/'", what, name)
	}
	return nil
}

// blockBits is the prefix length of the pool's blocks.
func (p *Pool) blockBits() int {
	bits := blockBits4
	if p.V6 {
		bits = blockBits6
	}
	return max(bits, p.Prefix.Bits())
}

// blockOf returns the block that holds a (an address of the pool).
func (p *Pool) blockOf(a netip.Addr) netip.Prefix {
	b, _ := a.Prefix(p.blockBits())
	return b
}

// holds reports whether this host holds block b.
func (p *Pool) holds(b netip.Prefix) bool {
	_, found := slices.BinarySearchFunc(p.Blocks, b, comparePrefix)
	return found
}

func (p *Pool) addBlock(b netip.Prefix) {
	i, found := slices.BinarySearchFunc(p.Blocks, b, comparePrefix)
	if !found {
		p.Blocks = slices.Insert(p.Blocks, i, b)
	}
}

// autoBlocks yields, in order, the blocks that overlap the range automatic
// addresses come from.
func (p *Pool) autoBlocks() iter.Seq[netip.Prefix] {
	return func(yield func(netip.Prefix) bool) {
		r := p.autoRange()
		last := lastAddr(r)
		for b := p.blockOf(r.Addr()); yield(b); {
			end := lastAddr(b)
			if end.Compare(last) >= 0 {
				return
			}
			b = netip.PrefixFrom(end.Next(), b.Bits())
		}
	}
}

// blockRange is where automatic addresses come from in block b: its part
// of the pool's range, reserved addresses left out. ok is false when
// nothing is left.
func (p *Pool) blockRange(b netip.Prefix) (addrRange, bool) {
	r := p.autoRange()
	in := b
	switch {
	case r.Bits() >= b.Bits() && b.Contains(r.Addr()):
		in = r // a range smaller than a block
	case b.Bits() >= r.Bits() && r.Contains(b.Addr()):
	default:
		return addrRange{}, false
	}
	lo, hi, ok := p.usable(in)
	return addrRange{lo, hi}, ok
}

// claimInBlocks hands out the next free address after the cursor in the
// blocks this host holds. The gateway is allocated on every host, so it is
// never among them.
func (p *Pool) claimInBlocks() (netip.Addr, bool) {
	var ranges []addrRange
	for _, b := range p.Blocks {
		if r, ok := p.blockRange(b); ok {
			ranges = append(ranges, r)
		}
	}
	a, ok := p.nextIn(ranges, p.Cursor)
	if ok {
		p.add(a)
		p.Cursor = a
	}
	return a, ok
}

// hasFree reports whether block b has a free address for automatic
// allocation on this host.
func (p *Pool) hasFree(b netip.Prefix) bool {
	r, ok := p.blockRange(b)
	if !ok {
		return false
	}
	_, ok = p.freeIn(r.lo, r.hi)
	return ok
}

// BlockUse is how much of one block a host has handed out.
type BlockUse struct {
	Block netip.Prefix
	// Allocated counts the block's addresses in use on this host (the
	// gateway and --aux-address ones included).
	Allocated uint64
	// Size is the number of addresses in the block.
	Size uint64
}

// BlockUse lists the blocks this host holds with how full they are.
func (p *Pool) BlockUse() []BlockUse {
	out := make([]BlockUse, len(p.Blocks))
	for i, b := range p.Blocks {
		lo, hi := b.Addr(), lastAddr(b)
		out[i] = BlockUse{Block: b, Allocated: p.countIn(lo, hi), Size: rangeSize(lo, hi)}
	}
	return out
}

// errNeedBlock says the blocks this host holds cannot serve a request: a
// block must be claimed in the cluster store first.
var errNeedBlock = errors.New("no free address in the blocks this host holds")

// errBlockHeld aborts the claim of a block that another host holds.
var errBlockHeld = errors.New("block held by another host")

// requestOverlayAddress hands out an address of a pool bound to an overlay
// (want, or the next free one): in the blocks this host holds, claiming one
// in the cluster store first when they cannot serve it. The local record
// holds the block and the address before the answer; a cluster store that
// cannot be reached leaves nothing recorded anywhere.
func (a *Allocator) requestOverlayAddress(st store.Store, key, id string, want netip.Addr) (netip.Prefix, error) {
	got, _, err := a.allocInBlocks(st, key, id, want, netip.Prefix{})
	if !errors.Is(err, errNeedBlock) {
		return got, err
	}
	// One claim at a time per host: concurrent requests that all found the
	// blocks full would otherwise each claim one.
	a.claimMu.Lock()
	defer a.claimMu.Unlock()
	for {
		got, p, err := a.allocInBlocks(st, key, id, want, netip.Prefix{})
		if !errors.Is(err, errNeedBlock) {
			return got, err
		}
		b, created, err := a.claimBlock(p, want)
		if err != nil {
			return netip.Prefix{}, err
		}
		got, _, err = a.allocInBlocks(st, key, id, want, b)
		if err != nil && created {
			a.unclaimBlock(p.Overlay, b) // nothing half-recorded
		}
		if !errors.Is(err, errNeedBlock) {
			return got, err
		}
	}
}

// allocInBlocks records block add (if valid) as this host's and hands out
// want, or the next free address, from the blocks this host holds, in one
// update of the local record. It fails with errNeedBlock, writing nothing,
// when those blocks cannot serve the request, with the record it saw.
func (a *Allocator) allocInBlocks(st store.Store, key, id string, want netip.Addr, add netip.Prefix) (netip.Prefix, Pool, error) {
	var got netip.Prefix
	var seen Pool
	err := updatePool(st, key, id, "request address from pool "+id, func(p *Pool) error {
		if add.IsValid() {
			p.addBlock(add)
		}
		var addr netip.Addr
		if want.IsValid() {
			if err := p.claimable(want); err != nil {
				return err
			}
			if !p.holds(p.blockOf(want)) {
				seen = *p // a fresh decoding, dropped with the aborted update
				return errNeedBlock
			}
			addr = want
			p.add(want)
		} else {
			var ok bool
			if addr, ok = p.claimInBlocks(); !ok {
				seen = *p
				return errNeedBlock
			}
		}
		got = netip.PrefixFrom(addr, p.Prefix.Bits())
		return nil
	})
	return got, seen, err
}

// claimBlock claims in the cluster store a block of pool p for want (its
// block), or for the next automatic address (the first block of the range
// that is free in the cluster and has a free address here). A block the
// cluster already gives this host but p lacks (a claim whose answer was
// lost, a state file replaced) is taken back without a write. created
// says whether this call wrote the block's key.
func (a *Allocator) claimBlock(p Pool, want netip.Addr) (b netip.Prefix, created bool, err error) {
	if want.IsValid() {
		b = p.blockOf(want)
		created, holder, err := a.createBlock(p, b)
		if errors.Is(err, errBlockHeld) {
			return netip.Prefix{}, false, fmt.Errorf("address %s is in block %s of overlay %s, held by host %s",
				want, b, p.Overlay, holder)
		}
		return b, created, err
	}

	kv, err := a.cluster.List(blocksPrefix(p.Overlay))
	if err != nil {
		return netip.Prefix{}, false, clusterError(p, err)
	}
	held := make(map[netip.Prefix]string, len(kv))
	for k, v := range kv {
		if _, blk, ok := parseBlockKey(k); ok {
			if held[blk], err = blockHolder(k, v); err != nil {
				return netip.Prefix{}, false, fmt.Errorf("claim a block of overlay %s: %w", p.Overlay, err)
			}
		}
	}
	// Blocks already this host's first (the lowest): taking them back
	// costs no write.
	var mine []netip.Prefix
	for blk, holder := range held {
		if holder == a.host && blk.Bits() == p.blockBits() && !p.holds(blk) && p.hasFree(blk) {
			mine = append(mine, blk)
		}
	}
	if len(mine) > 0 {
		return slices.MinFunc(mine, comparePrefix), false, nil
	}
	for blk := range p.autoBlocks() {
		if _, taken := held[blk]; taken || p.holds(blk) || !p.hasFree(blk) {
			continue
		}
		created, holder, err := a.createBlock(p, blk)
		if errors.Is(err, errBlockHeld) {
			held[blk] = holder // claimed meanwhile by another host
			continue
		}
		return blk, created, err
	}
	return netip.Prefix{}, false, p.exhaustedCluster(held)
}

// createBlock writes block b as this host's unless it exists. A block
// that is already this host's is fine (created false); one held by
// another host fails with errBlockHeld and its holder.
func (a *Allocator) createBlock(p Pool, b netip.Prefix) (created bool, holder string, err error) {
	val, err := json.Marshal(blockRecord{Host: a.host})
	if err != nil {
		return false, "", err
	}
	key := blockKey(p.Overlay, b)
	err = a.cluster.Update(key, func(old []byte) ([]byte, error) {
		created, holder = false, ""
		if old == nil {
			created = true
			return val, nil
		}
		h, err := blockHolder(key, old)
		if err != nil {
			return nil, err
		}
		if h == a.host {
			return nil, errNoChange
		}
		holder = h
		return nil, errBlockHeld
	})
	switch {
	case err == nil, errors.Is(err, errNoChange):
		return created, "", nil
	case errors.Is(err, errBlockHeld):
		return false, holder, err
	}
	return false, "", clusterError(p, err)
}

// unclaimBlock deletes block b of overlay if this host holds it, as best
// it can: a block left held is taken back by this host's next claim
// (claimBlock), or deleted with the pool.
func (a *Allocator) unclaimBlock(overlay string, b netip.Prefix) {
	key := blockKey(overlay, b)
	a.cluster.Update(key, func(old []byte) ([]byte, error) {
		if h, err := blockHolder(key, old); old == nil || err != nil || h != a.host {
			return nil, errNoChange // not ours (or not readable): leave it
		}
		return nil, nil
	})
}

// clusterError is the error of a claim that the cluster store failed.
func clusterError(p Pool, err error) error {
	return fmt.Errorf("claim an address block of overlay %s for pool %s: %w", p.Overlay, p.ID(), clusterStoreError(err))
}

// exhaustedCluster says that no block of the range has a free address,
// naming the hosts that hold them.
func (p *Pool) exhaustedCluster(held map[netip.Prefix]string) error {
	var hosts []string
	for b := range p.autoBlocks() {
		if h, ok := held[b]; ok {
			hosts = append(hosts, h)
		}
	}
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	what := "pool " + p.Prefix.String()
	if r := p.autoRange(); r != p.Prefix {
		what += " (range " + r.String() + ")"
	}
	if len(hosts) == 0 {
		return fmt.Errorf("%s is exhausted cluster-wide (no block has a free address)", what)
	}
	return fmt.Errorf("%s is exhausted cluster-wide (blocks held by hosts %s)", what, strings.Join(hosts, ", "))
}

// releaseBlocks deletes the blocks that host holds in the cluster store:
// of overlay ("" = every overlay), inside within (the zero Prefix = any).
// It returns how many it deleted.
func (a *Allocator) releaseBlocks(overlay, host string, within netip.Prefix) (int, error) {
	prefix := overlaysPrefix
	if overlay != "" {
		prefix = blocksPrefix(overlay)
	}
	kv, err := a.cluster.List(prefix)
	if err != nil {
		return 0, err
	}
	n := 0
	for k, v := range kv {
		_, b, ok := parseBlockKey(k)
		if !ok || (within.IsValid() && !within.Contains(b.Addr())) {
			continue
		}
		if h, err := blockHolder(k, v); err != nil || h != host {
			continue
		}
		err := a.cluster.Update(k, func(old []byte) ([]byte, error) {
			if old == nil {
				return nil, errNoChange
			}
			if h, err := blockHolder(k, old); err != nil || h != host {
				return nil, errNoChange // claimed anew meanwhile
			}
			return nil, nil
		})
		switch {
		case err == nil:
			n++
		case !errors.Is(err, errNoChange):
			return n, err
		}
	}
	return n, nil
}

// BindOverlay marks pool poolID as this host's instance of overlay (the
// driver calls it once it knows the network is an overlay, before any
// container is on it): from then on its container addresses come from
// blocks claimed in the cluster store, unique across all hosts. The
// gateway and --aux-address addresses, asked for before, stay local: every
// host's instance has the same ones. Binding again to the same overlay is
// a no-op.
func (a *Allocator) BindOverlay(poolID, overlay string) error {
	if a.cluster == nil {
		return errors.New("overlay networks need a cluster store: set CONSUL_HTTP_ADDR")
	}
	if err := checkName("overlay", overlay); err != nil {
		return err
	}
	st, key, err := a.lookup(poolID)
	if err != nil {
		return err
	}
	return updatePool(st, key, poolID, "bind pool "+poolID+" to overlay "+overlay, func(p *Pool) error {
		switch p.Overlay {
		case overlay:
			return errNoChange
		case "":
			p.Overlay = overlay
			return nil
		}
		return fmt.Errorf("pool %s is bound to overlay %s, not %s", poolID, p.Overlay, overlay)
	})
}

// ReleaseHostBlocks deletes from the cluster store every block that host
// holds in overlay ("" = every overlay), so its addresses can be handed out
// again, and returns how many it deleted. It is for an operator removing a
// dead host for good, and never runs by itself: a host that was only cut
// off and comes back would hand out its addresses again.
func (a *Allocator) ReleaseHostBlocks(overlay, host string) (int, error) {
	if a.cluster == nil {
		return 0, errors.New("overlay networks need a cluster store: set CONSUL_HTTP_ADDR")
	}
	if overlay != "" {
		if err := checkName("overlay", overlay); err != nil {
			return 0, err
		}
	}
	if host == "" {
		return 0, errors.New("release blocks: no host named")
	}
	if host == a.host {
		return 0, fmt.Errorf("host %s is this host: its blocks are released with its networks (docker network rm)", host)
	}
	n, err := a.releaseBlocks(overlay, host, netip.Prefix{})
	if err != nil {
		return n, fmt.Errorf("release blocks of host %s: %w", host, clusterStoreError(err))
	}
	return n, nil
}

// clusterStoreError says "cluster store unavailable" when it is.
func clusterStoreError(err error) error {
	if errors.Is(err, store.ErrUnavailable) {
		return fmt.Errorf("cluster store unavailable: %w", err)
	}
	return fmt.Errorf("cluster store: %w", err)
}

// BlockConflict is a block this host's records hold that the cluster
// gives another host, while containers here have addresses in it: those
// addresses may be handed out twice.
type BlockConflict struct {
	Overlay   string
	Block     netip.Prefix
	Holder    string
	Addresses []netip.Addr
}

// BlockCheck says what one CheckBlocks changed.
type BlockCheck struct {
	Dropped   int // blocks the cluster no longer gives this host: dropped here
	Reclaimed int // blocks it no longer gave, with addresses in use here: claimed back
	Conflicts []BlockConflict
}

// CheckBlocks compares the blocks this host's pools hold with the cluster
// store, for a host that may have been removed (ReleaseHostBlocks) while it
// was away and came back with its state: the blocks are no longer its own
// there, and another host may have claimed them. endpoints are the
// addresses of this host's running containers. A block the cluster still
// gives this host stays. One it does not is dropped here, so no address is
// handed out of it any more; but if it is free in the cluster and this host
// has addresses in use in it (any but the gateway, which every host has),
// it is claimed back instead, so no other host can take them. A block
// another host holds while a container here has an address in it is a
// conflict: the address may be another host's container's too, and only
// an operator can tell which one to move. It is reported at every check
// until resolved; the address stays recorded here, so it is not handed out
// here again.
func (a *Allocator) CheckBlocks(endpoints []netip.Addr) (BlockCheck, error) {
	var check BlockCheck
	if a.cluster == nil {
		return check, nil
	}
	a.claimMu.Lock() // no claim of this host's moves the blocks meanwhile
	defer a.claimMu.Unlock()
	pools, err := a.Pools()
	if err != nil {
		return check, err
	}
	held := map[string]map[netip.Prefix]string{} // by overlay
	for _, p := range pools {
		if p.Overlay == "" {
			continue
		}
		if held[p.Overlay] == nil {
			kv, err := a.cluster.List(blocksPrefix(p.Overlay))
			if err != nil {
				return check, fmt.Errorf("check the blocks of overlay %s: %w", p.Overlay, clusterStoreError(err))
			}
			held[p.Overlay] = map[netip.Prefix]string{}
			for k, v := range kv {
				if _, b, ok := parseBlockKey(k); ok {
					held[p.Overlay][b], _ = blockHolder(k, v)
				}
			}
		}
		used := map[netip.Prefix][]netip.Addr{} // endpoints' addresses by block
		for _, e := range endpoints {
			if p.Prefix.Contains(e) {
				used[p.blockOf(e)] = append(used[p.blockOf(e)], e)
			}
		}
		consider := slices.Clone(p.Blocks)
		for b := range used {
			if !p.holds(b) {
				consider = append(consider, b)
			}
		}
		var drop, add []netip.Prefix
		for _, b := range consider {
			holder, claimed := held[p.Overlay][b]
			if holder == a.host {
				continue
			}
			if !claimed && (p.inUse(b) || len(used[b]) > 0) {
				_, h, err := a.createBlock(p, b)
				if err == nil {
					check.Reclaimed++
					if !p.holds(b) {
						add = append(add, b)
					}
					continue
				}
				if !errors.Is(err, errBlockHeld) {
					return check, err
				}
				holder = h // claimed meanwhile
			}
			if p.holds(b) {
				drop = append(drop, b)
			}
			if holder != "" && len(used[b]) > 0 {
				check.Conflicts = append(check.Conflicts, BlockConflict{Overlay: p.Overlay, Block: b, Holder: holder, Addresses: used[b]})
			}
		}
		if len(drop)+len(add) == 0 {
			continue
		}
		st, key, err := a.lookup(p.ID())
		if err != nil {
			return check, err
		}
		err = updatePool(st, key, p.ID(), "check the blocks of pool "+p.ID(), func(rec *Pool) error {
			rec.Blocks = slices.DeleteFunc(rec.Blocks, func(b netip.Prefix) bool { return slices.Contains(drop, b) })
			for _, b := range add {
				rec.addBlock(b)
			}
			return nil
		})
		if err != nil {
			return check, err
		}
		check.Dropped += len(drop)
	}
	a.conflictsMu.Lock()
	a.conflicts = check.Conflicts
	a.conflictsMu.Unlock()
	return check, nil
}

// inUse reports whether addresses of block b other than the gateway are
// allocated here.
func (p *Pool) inUse(b netip.Prefix) bool {
	first, end := p.allocatedIn(b.Addr(), lastAddr(b))
	return slices.ContainsFunc(p.Allocated[first:end], func(x netip.Addr) bool { return x != p.Gateway })
}

// BlockConflicts are the conflicts the last CheckBlocks found.
func (a *Allocator) BlockConflicts() []BlockConflict {
	a.conflictsMu.Lock()
	defer a.conflictsMu.Unlock()
	return a.conflicts
}
