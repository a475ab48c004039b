package overlay

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func testPeer(last byte, vtep string) Peer {
	return Peer{
		MAC:  net.HardwareAddr{0x02, 0x42, 10, 200, 0, last},
		IPv4: netip.AddrFrom4([4]byte{10, 200, 0, last}),
		IPv6: netip.AddrFrom16([16]byte{0xfd, 0, 2, 0, 15: last}),
		VTEP: netip.MustParseAddr(vtep),
	}
}

func mustPeer(t *testing.T, last byte, vtep string) peer {
	t.Helper()
	q, err := toPeer(testPeer(last, vtep))
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func fdb(p peer) entry { return entry{kind: FDB, mac: p.mac, ip: p.vtep} }
func nb4(p peer) entry { return entry{kind: Neighbour, mac: p.mac, ip: p.v4} }
func nb6(p peer) entry { return entry{kind: Neighbour, mac: p.mac, ip: p.v6} }

func set(es ...entry) map[entry]bool {
	m := map[entry]bool{}
	for _, e := range es {
		m[e] = true
	}
	return m
}

func sameEntries(t *testing.T, what string, got []entry, want ...entry) {
	t.Helper()
	slices.SortFunc(want, compareEntries)
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", what, entries(got), entries(want))
	}
}

func TestDeviceName(t *testing.T) {
	for _, vni := range []uint32{1, 42, MaxVNI} {
		name := DeviceName(vni)
		if len(name) > 15 || !strings.HasPrefix(name, DevicePrefix) {
			t.Fatalf("DeviceName(%d) = %q", vni, name)
		}
		if got, ok := ParseDeviceName(name); !ok || got != vni {
			t.Fatalf("ParseDeviceName(%q) = %d, %v", name, got, ok)
		}
	}
	for _, name := range []string{"vxo-", "vxo-0", "vxo-042", "vxo-16777216", "vxo-1a", "vxo--1", "vxb-42", "eth0"} {
		if vni, ok := ParseDeviceName(name); ok {
			t.Fatalf("ParseDeviceName(%q) = %d, want none", name, vni)
		}
	}
}

// Bad input is refused before anything reaches the kernel, so these run
// without root.
func TestBadInput(t *testing.T) {
	o := New(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	defer o.Close()
	ctx := context.Background()
	good := Device{VNI: 42, Local: netip.MustParseAddr("192.0.2.1"), MTU: 1450, Bridge: "br0"}
	devs := map[string]func(*Device){
		"VNI 0 is out of range":                func(d *Device) { d.VNI = 0 },
		"VNI 16777216 is out of range":         func(d *Device) { d.VNI = MaxVNI + 1 },
		"is not a unicast address":             func(d *Device) { d.Local = netip.Addr{} },
		`"224.0.0.1" of VNI 42 is not a unica`: func(d *Device) { d.Local = netip.MustParseAddr("224.0.0.1") },
		"MTU 40 of VNI 42 is out of range":     func(d *Device) { d.MTU = 40 },
		"no bridge given for VNI 42":           func(d *Device) { d.Bridge = "" },
	}
	for want, mutate := range devs {
		d := good
		mutate(&d)
		if err := o.EnsureDevice(ctx, d); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("EnsureDevice(%+v) = %v, want an error with %q", d, err, want)
		}
	}
	if err := o.DeleteDevice(ctx, 0); err == nil || !strings.Contains(err.Error(), "VNI 0 is out of range") {
		t.Errorf("DeleteDevice(0) = %v", err)
	}

	base := testPeer(3, "192.0.2.2")
	peers := map[string]func(*Peer){
		"is not a unicast Ethernet address": func(p *Peer) { p.MAC = p.MAC[:5] },
		"MAC \"01:42":                       func(p *Peer) { p.MAC = net.HardwareAddr{1, 0x42, 0, 0, 0, 1} },
		"MAC \"00:00:00:00:00:00\"":         func(p *Peer) { p.MAC = make(net.HardwareAddr, 6) },
		"no IP address":                     func(p *Peer) { p.IPv4, p.IPv6 = netip.Addr{}, netip.Addr{} },
		"fd00:200::3 is not an IPv4":        func(p *Peer) { p.IPv4 = p.IPv6 },
		"10.200.0.3 is not an IPv6":         func(p *Peer) { p.IPv6 = p.IPv4 },
		"::ffff:10.200.0.3 is not an IPv6":  func(p *Peer) { p.IPv6 = netip.AddrFrom16(p.IPv4.As16()) },
		"VTEP \"invalid IP\"":               func(p *Peer) { p.VTEP = netip.Addr{} },
		"VTEP \"0.0.0.0\"":                  func(p *Peer) { p.VTEP = netip.IPv4Unspecified() },
	}
	for want, mutate := range peers {
		p := base
		p.MAC = slices.Clone(base.MAC)
		mutate(&p)
		for name, call := range map[string]func() error{
			"Add":    func() error { return o.Add(ctx, 42, p) },
			"Remove": func() error { return o.Remove(ctx, 42, p) },
			"Sync":   func() error { return o.Sync(ctx, 42, []Peer{base, p}) },
		} {
			if err := call(); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "VNI 42") {
				t.Errorf("%s(%s) = %v, want an error with %q", name, p, err, want)
			}
		}
	}
	if err := o.Add(ctx, MaxVNI+1, base); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("Add to VNI %d = %v", MaxVNI+1, err)
	}
	// Nothing of the refused calls reached the table.
	if st, err := o.Status(ctx, 42); err != nil || len(st.Wanted) != 0 || st.Synced {
		t.Errorf("Status after refused calls: %+v, %v", st, err)
	}
}

func TestWantedEntries(t *testing.T) {
	local := netip.MustParseAddr("192.0.2.1")
	a, b, self := mustPeer(t, 3, "192.0.2.2"), mustPeer(t, 4, "192.0.2.3"), mustPeer(t, 5, "192.0.2.1")
	var tab table
	for _, p := range []peer{a, b, self} {
		tab.add(7, p)
	}
	// One FDB and one neighbour entry per IP; none for a peer on this host.
	want := tab.wanted(7, local)
	sameEntries(t, "wanted", slices.SortedFunc(maps.Keys(want), compareEntries), fdb(a), fdb(b), nb4(a), nb4(b), nb6(a), nb6(b))
	if len(tab.wanted(8, local)) != 0 {
		t.Fatal("another VNI wants entries")
	}

	// Two MACs claiming one IP: the one added last owns the neighbour entry;
	// when it goes, the other takes the IP back.
	c := b
	c.mac[5] = 0x99
	tab.add(7, c)
	if w := tab.wanted(7, local); !w[nb4(c)] || w[nb4(b)] || !w[fdb(b)] || !w[fdb(c)] {
		t.Fatalf("IP claimed twice: %v", w)
	}
	tab.remove(7, c)
	if w := tab.wanted(7, local); !w[nb4(b)] || w[fdb(c)] {
		t.Fatalf("after the later claim left: %v", w)
	}
}

func TestRemoveKeepsNewerIncarnation(t *testing.T) {
	var tab table
	old := mustPeer(t, 3, "192.0.2.2")
	moved := old
	moved.vtep = netip.MustParseAddr("192.0.2.3") // same IP, so same MAC, on another host
	tab.add(7, old)
	tab.add(7, moved) // the new endpoint's add overtakes the old one's remove
	tab.remove(7, old)
	if ps := tab.peers(7); len(ps) != 1 || !ps[0].same(moved) {
		t.Fatalf("peers after a late remove: %v", ps)
	}
	// The old FDB entry, if the device still had it, goes; the new one stays.
	have := set(entry{kind: FDB, mac: old.mac, ip: old.vtep}, nb4(old))
	del, add := diff(tab.wanted(7, netip.Addr{}), have, false, old.entries())
	sameEntries(t, "delete", del, fdb(old))
	sameEntries(t, "add", add, fdb(moved), nb6(moved))

	tab.remove(7, moved)
	if _, ok := tab.vnis[7]; ok {
		t.Fatal("an empty VNI that was never synced stays in the table")
	}
}

func TestDiffAndResync(t *testing.T) {
	var tab table
	a, b, stale := mustPeer(t, 3, "192.0.2.2"), mustPeer(t, 4, "192.0.2.2"), mustPeer(t, 9, "192.0.2.9")
	have := set(fdb(a), nb4(a), fdb(stale), nb4(stale), nb6(stale))

	// Not synced yet (a restart): what the device holds stays, only
	// missing entries are added.
	tab.add(7, a)
	tab.add(7, b)
	del, add := diff(tab.wanted(7, netip.Addr{}), have, tab.synced(7), nil)
	sameEntries(t, "delete before sync", del)
	sameEntries(t, "add before sync", add, nb6(a), fdb(b), nb4(b), nb6(b))

	// An explicit remove deletes that peer's entries even before a sync.
	tab.remove(7, stale)
	del, _ = diff(tab.wanted(7, netip.Addr{}), have, tab.synced(7), stale.entries())
	sameEntries(t, "delete on remove", del, fdb(stale), nb4(stale), nb6(stale))

	// A sync is the whole set: everything else is stale and goes.
	if dropped := tab.sync(7, []peer{b}); len(dropped) != 0 {
		t.Fatalf("dropped %v", dropped)
	}
	if !tab.synced(7) {
		t.Fatal("not synced after sync")
	}
	del, add = diff(tab.wanted(7, netip.Addr{}), have, tab.synced(7), nil)
	sameEntries(t, "delete after sync", del, fdb(a), fdb(stale), nb4(a), nb4(stale), nb6(stale))
	sameEntries(t, "add after sync", add, fdb(b), nb4(b), nb6(b))

	// Applied, the same sync changes nothing more (idempotent).
	have = tab.wanted(7, netip.Addr{})
	if del, add := diff(tab.wanted(7, netip.Addr{}), have, true, nil); len(del)+len(add) != 0 {
		t.Fatalf("second pass: delete %v add %v", del, add)
	}

	// An empty sync keeps the VNI, synced, so stale entries keep going.
	tab.sync(7, nil)
	if !tab.synced(7) || len(tab.peers(7)) != 0 {
		t.Fatal("empty sync")
	}
	tab.forget(7)
	if tab.synced(7) {
		t.Fatal("forgotten VNI still synced")
	}
}

func TestMovedMACIsDeletedThenAdded(t *testing.T) {
	var tab table
	a := mustPeer(t, 3, "192.0.2.2")
	moved := a
	moved.vtep = netip.MustParseAddr("192.0.2.3")
	tab.sync(7, []peer{moved})
	del, add := diff(tab.wanted(7, netip.Addr{}), set(a.entries()...), true, nil)
	sameEntries(t, "delete", del, fdb(a))
	sameEntries(t, "add", add, fdb(moved))
}

func TestSyncDuplicateMACLaterWins(t *testing.T) {
	var tab table
	a := mustPeer(t, 3, "192.0.2.2")
	b := a
	b.vtep = netip.MustParseAddr("192.0.2.3")
	dropped := tab.sync(7, []peer{a, b})
	if len(dropped) != 1 || !dropped[0].same(a) {
		t.Fatalf("dropped %v", dropped)
	}
	if ps := tab.peers(7); len(ps) != 1 || !ps[0].same(b) {
		t.Fatalf("peers %v", ps)
	}
}
