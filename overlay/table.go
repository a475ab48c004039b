package overlay

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"
)

// Peer is one remote endpoint of an overlay: a container on another host.
type Peer struct {
	MAC  net.HardwareAddr // the container's MAC
	IPv4 netip.Addr       // its IPv4 address, or the zero Addr
	IPv6 netip.Addr       // its IPv6 address, or the zero Addr
	VTEP netip.Addr       // the VTEP (underlay) address of its host
	// Advertised is when its host advertised it (that host's clock), for
	// the convergence lag; the zero Time if unknown.
	Advertised time.Time
}

func (p Peer) String() string {
	return fmt.Sprintf("%s %s %s via %s", p.MAC, p.IPv4, p.IPv6, p.VTEP)
}

// peer is a checked Peer, comparable.
type peer struct {
	mac    mac
	v4, v6 netip.Addr
	vtep   netip.Addr
	seq    uint64 // when it was added: of two peers with one IP, the later wins
	// advertised: see Peer. given: when the control plane first gave
	// this incarnation here. programmed: its entries were in the kernel
	// once (observed then, never again).
	advertised, given time.Time
	programmed        bool
}

type mac [6]byte

func (m mac) String() string { return net.HardwareAddr(m[:]).String() }

func toPeer(p Peer) (peer, error) {
	if len(p.MAC) != 6 || p.MAC[0]&1 != 0 || mac(p.MAC) == (mac{}) {
		return peer{}, fmt.Errorf("peer %s: MAC %q is not a unicast Ethernet address", p, p.MAC)
	}
	if p.IPv4.IsValid() && !p.IPv4.Is4() {
		return peer{}, fmt.Errorf("peer %s: %s is not an IPv4 address", p, p.IPv4)
	}
	if p.IPv6.IsValid() && (!p.IPv6.Is6() || p.IPv6.Is4In6()) {
		return peer{}, fmt.Errorf("peer %s: %s is not an IPv6 address", p, p.IPv6)
	}
	if !p.IPv4.IsValid() && !p.IPv6.IsValid() {
		return peer{}, fmt.Errorf("peer %s: no IP address", p)
	}
	vtep := p.VTEP.Unmap()
	if !vtep.IsValid() || vtep.IsUnspecified() || vtep.IsMulticast() {
		return peer{}, fmt.Errorf("peer %s: VTEP %q is not a unicast address", p, p.VTEP)
	}
	return peer{mac: mac(p.MAC), v4: p.IPv4, v6: p.IPv6, vtep: vtep, advertised: p.Advertised}, nil
}

func (p peer) Peer() Peer {
	return Peer{MAC: net.HardwareAddr(p.mac[:]), IPv4: p.v4, IPv6: p.v6, VTEP: p.vtep, Advertised: p.advertised}
}

// same reports whether p and q describe one endpoint incarnation.
func (p peer) same(q peer) bool {
	return p.mac == q.mac && p.v4 == q.v4 && p.v6 == q.v6 && p.vtep == q.vtep
}

// entries are the kernel entries p needs: its MAC's FDB entry and a
// neighbour entry per IP.
func (p peer) entries() []entry {
	out := []entry{{kind: FDB, mac: p.mac, ip: p.vtep}}
	for _, ip := range []netip.Addr{p.v4, p.v6} {
		if ip.IsValid() {
			out = append(out, entry{kind: Neighbour, mac: p.mac, ip: ip})
		}
	}
	return out
}

// EntryKind tells an FDB entry from a neighbour entry.
type EntryKind uint8

const (
	FDB       EntryKind = iota + 1 // MAC → remote VTEP, on the VXLAN device (self, permanent)
	Neighbour                      // container IP → MAC, on the VXLAN device (permanent)
)

// Entry is one FDB or neighbour entry on a VXLAN device.
type Entry struct {
	Kind EntryKind
	MAC  net.HardwareAddr
	IP   netip.Addr // FDB: the remote VTEP; neighbour: the container's IP
}

func (e Entry) String() string {
	if e.Kind == FDB {
		return fmt.Sprintf("fdb %s dst %s", e.MAC, e.IP)
	}
	return fmt.Sprintf("neigh %s lladdr %s", e.IP, e.MAC)
}

type entry struct {
	kind EntryKind
	mac  mac
	ip   netip.Addr
}

func (e entry) Entry() Entry { return Entry{Kind: e.kind, MAC: net.HardwareAddr(e.mac[:]), IP: e.ip} }

func compareEntries(a, b entry) int {
	if c := cmp.Compare(a.kind, b.kind); c != 0 {
		return c
	}
	if c := a.ip.Compare(b.ip); c != 0 {
		return c
	}
	return slices.Compare(a.mac[:], b.mac[:])
}

// table is what the control plane wants programmed, per VNI. It is pure
// bookkeeping: only the Overlay's loop goroutine uses it.
type table struct {
	vnis map[uint32]*vniPeers
	seq  uint64
}

type vniPeers struct {
	peers map[mac]peer
	// synced: a full set was given (sync), so an entry on the device that
	// is not wanted is stale and removed. Before that (a restart, the
	// control plane not reached yet) nothing is removed that was not
	// explicitly removed: traffic keeps flowing on what the kernel holds.
	synced bool
}

func (t *table) vni(vni uint32) *vniPeers {
	if t.vnis == nil {
		t.vnis = map[uint32]*vniPeers{}
	}
	v := t.vnis[vni]
	if v == nil {
		v = &vniPeers{peers: map[mac]peer{}}
		t.vnis[vni] = v
	}
	return v
}

// add makes p wanted; a peer with p's MAC is replaced (it moved).
func (t *table) add(vni uint32, p peer) {
	t.seq++
	p.seq = t.seq
	v := t.vni(vni)
	v.peers[p.mac] = v.carry(p)
}

// carry keeps what the table knows of p's incarnation (when it was given,
// whether it was programmed); a new incarnation stays as it came.
func (v *vniPeers) carry(p peer) peer {
	if v != nil {
		if q, ok := v.peers[p.mac]; ok && q.same(p) {
			p.given, p.programmed = q.given, q.programmed
		}
	}
	return p
}

// programmed marks vni's peer with MAC m as programmed.
func (t *table) programmed(vni uint32, m mac) {
	if v := t.vnis[vni]; v != nil {
		if p, ok := v.peers[m]; ok {
			p.programmed = true
			v.peers[m] = p
		}
	}
}

// remove drops p if the table holds exactly p for its MAC. A different
// peer with that MAC is a newer incarnation (the address was reused,
// and its add overtook this remove): it stays.
func (t *table) remove(vni uint32, p peer) {
	v := t.vnis[vni]
	if v == nil {
		return
	}
	if q, ok := v.peers[p.mac]; ok && q.same(p) {
		delete(v.peers, p.mac)
	}
	if len(v.peers) == 0 && !v.synced {
		delete(t.vnis, vni)
	}
}

// sync makes ps the whole wanted set of vni. Of two peers with one MAC
// the later in ps wins; the earlier ones are returned.
func (t *table) sync(vni uint32, ps []peer) (dropped []peer) {
	v := &vniPeers{peers: make(map[mac]peer, len(ps)), synced: true}
	old := t.vnis[vni]
	for _, p := range ps {
		if q, ok := v.peers[p.mac]; ok {
			dropped = append(dropped, q)
		}
		t.seq++
		p.seq = t.seq
		v.peers[p.mac] = old.carry(p)
	}
	if t.vnis == nil {
		t.vnis = map[uint32]*vniPeers{}
	}
	t.vnis[vni] = v
	return dropped
}

func (t *table) forget(vni uint32) { delete(t.vnis, vni) }

func (t *table) synced(vni uint32) bool { return t.vnis[vni] != nil && t.vnis[vni].synced }

// peers lists vni's wanted peers, ordered by MAC.
func (t *table) peers(vni uint32) []peer {
	v := t.vnis[vni]
	if v == nil {
		return nil
	}
	out := make([]peer, 0, len(v.peers))
	for _, p := range v.peers {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b peer) int { return slices.Compare(a.mac[:], b.mac[:]) })
	return out
}

// wanted is the set of entries the device of vni must hold. Peers behind
// local (this host's VTEP) are left out: they sit on the bridge itself,
// and the device answering ARP for them would teach the bridge to send
// their traffic into the tunnel. Of two peers claiming one IP, the one
// added last gets the neighbour entry.
func (t *table) wanted(vni uint32, local netip.Addr) map[entry]bool {
	want := map[entry]bool{}
	owner := map[netip.Addr]peer{}
	for _, p := range t.peers(vni) {
		if p.vtep == local {
			continue
		}
		for _, e := range p.entries() {
			if e.kind == FDB {
				want[e] = true
			} else if q, ok := owner[e.ip]; !ok || p.seq > q.seq {
				owner[e.ip] = p
			}
		}
	}
	for ip, p := range owner {
		want[entry{kind: Neighbour, mac: p.mac, ip: ip}] = true
	}
	return want
}

// diff says how to bring the entries a device has to want: add what is
// missing; delete what is not wanted if prune (a full set is known) or if
// it is in gone (explicitly removed). Deletes come first, so an FDB
// entry whose MAC moved to another VTEP is removed, then added anew.
func diff(want, have map[entry]bool, prune bool, gone []entry) (del, add []entry) {
	for e := range want {
		if !have[e] {
			add = append(add, e)
		}
	}
	for e := range have {
		if !want[e] && (prune || slices.Contains(gone, e)) {
			del = append(del, e)
		}
	}
	slices.SortFunc(add, compareEntries)
	slices.SortFunc(del, compareEntries)
	return del, add
}
