package overlay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxbridge/vxbridge/kernel"
)

const (
	testVNI = 4242
	ovMTU   = 1450 // underlay 1500 − 50
)

var testDev = DeviceName(testVNI)

// testHost is one "host": a namespace with an underlay address, the
// overlay's bridge, one container on it, and an Overlay programming it.
type testHost struct {
	ns   netns.NsHandle
	nl   *netlink.Handle
	vtep netip.Addr
	ov   *Overlay
	ctr  netns.NsHandle // the container's namespace
	peer Peer           // the container, as the other host sees it
}

func (h *testHost) device() Device {
	return Device{VNI: testVNI, Local: h.vtep, MTU: ovMTU, Bridge: "br0"}
}

// twoHosts builds host 1 (VTEP 192.0.2.1, container 10.200.0.2) and host 2
// (VTEP 192.0.2.2, container 10.200.0.3), joined by a veth underlay. Each
// bridge holds the same gateway, 10.200.0.1. No VXLAN device yet.
func twoHosts(t *testing.T) (h1, h2 *testHost) {
	t.Helper()
	needRoot(t)
	hosts := []*testHost{{vtep: netip.MustParseAddr("192.0.2.1")}, {vtep: netip.MustParseAddr("192.0.2.2")}}
	for _, h := range hosts {
		h.ns, h.nl = newNS(t)
	}
	la := netlink.NewLinkAttrs()
	la.Name = "ul0"
	if err := hosts[0].nl.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "ul0", PeerNamespace: netlink.NsFd(hosts[1].ns)}); err != nil {
		t.Fatal(err)
	}
	for i, h := range hosts {
		addAddr(t, h.nl, mustLink(t, h.nl, "ul0"), h.vtep.String()+"/24")
		linkUp(t, h.nl, "ul0")
		addBridge(t, h.nl, byte(i+1), ovMTU)
		h.ctr, _, h.peer = addContainer(t, h.nl, byte(i+2), ovMTU, h.vtep)
		h.ov = newTestOverlay(t, h.ns)
	}
	for _, h := range hosts {
		settle(t, h.ctr)
	}
	return hosts[0], hosts[1]
}

// settle waits until the container reaches its gateway: a bridge port is
// forwarding a few milliseconds after its veth comes up, and an ARP lost
// before that costs a second's retransmit, which would muddle the
// first-packet check.
func settle(t *testing.T, ctr netns.NsHandle) {
	t.Helper()
	gw := netip.MustParseAddr("10.200.0.1")
	for i := 0; ; i++ {
		_, err := ping(t, ctr, gw, 200*time.Millisecond)
		if err == nil {
			return
		}
		if i == 15 {
			t.Fatalf("the container does not reach its gateway: %v", err)
		}
	}
}

func mustStatus(t *testing.T, o *Overlay) Status {
	t.Helper()
	st, err := o.Status(context.Background(), testVNI)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func peerEntries(p Peer) []Entry {
	q, _ := toPeer(p)
	return entries(q.entries())
}

func sameEntryList(t *testing.T, what string, got []Entry, want ...Entry) {
	t.Helper()
	key := func(es []Entry) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.String())
		}
		slices.Sort(out)
		return out
	}
	if g, w := key(got), key(want); !slices.Equal(g, w) {
		t.Fatalf("%s: got %q, want %q", what, g, w)
	}
}

// kernelEntries reads the entries on the host's VXLAN device straight from
// the kernel, not through the package.
func kernelEntries(t *testing.T, h *testHost) []string {
	t.Helper()
	dev := mustLink(t, h.nl, testDev)
	var out []string
	for _, fam := range []int{unix.AF_BRIDGE, unix.AF_INET, unix.AF_INET6} {
		ns, err := h.nl.NeighList(dev.Attrs().Index, fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.IP != nil && n.State&netlink.NUD_PERMANENT != 0 {
				out = append(out, fmt.Sprintf("%d %s %s", fam, n.IP, n.HardwareAddr))
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestTwoHostsOverVXLAN(t *testing.T) {
	h1, h2 := twoHosts(t)
	ctx := context.Background()
	outer := t // what lives on past a subtest is cleaned up with the whole test

	// A peer given before the device exists is kept, then programmed when
	// the device is made.
	if err := h2.ov.Add(ctx, testVNI, h1.peer); err != nil {
		t.Fatal(err)
	}
	st := mustStatus(t, h2.ov)
	if st.Device != "" || len(st.Wanted) != 1 || len(st.Missing) != 3 {
		t.Fatalf("status before the device: %+v", st)
	}
	for _, h := range []*testHost{h1, h2} {
		for i := 0; i < 2; i++ { // a second run changes nothing
			if err := h.ov.EnsureDevice(ctx, h.device()); err != nil {
				t.Fatalf("EnsureDevice run %d: %v", i+1, err)
			}
		}
	}
	if st := mustStatus(t, h2.ov); st.Device != testDev || len(st.Missing)+len(st.Stale) != 0 {
		t.Fatalf("status after the device: %+v", st)
	}
	checkDevice(t, h1)
	if err := h1.ov.Add(ctx, testVNI, h2.peer); err != nil {
		t.Fatal(err)
	}
	sameEntryList(t, "programmed on host 1", mustStatus(t, h1.ov).Programmed, peerEntries(h2.peer)...)

	t.Run("first packet, no ARP across", func(t *testing.T) {
		// Neither container has resolved the other. The one echo request
		// and the one reply are the only packets the tunnel carries: each
		// side's ARP was answered by its own VXLAN device.
		tx1, tx2 := stats(t, h1.nl, testDev).TxPackets, stats(t, h2.nl, testDev).TxPackets
		mustPing(t, h1.ctr, h2.peer.IPv4)
		if d1, d2 := stats(t, h1.nl, testDev).TxPackets-tx1, stats(t, h2.nl, testDev).TxPackets-tx2; d1 != 1 || d2 != 1 {
			t.Fatalf("packets into the tunnel: host 1 %d, host 2 %d; want 1 each", d1, d2)
		}
		if mac := neighMAC(t, h1.ctr, h2.peer.IPv4); mac != h2.peer.MAC.String() {
			t.Fatalf("container 1 resolved %s to %q", h2.peer.IPv4, mac)
		}
	})

	t.Run("both ways, IPv4 and IPv6", func(t *testing.T) {
		for _, pair := range [][2]*testHost{{h1, h2}, {h2, h1}} {
			mustPing(t, pair[0].ctr, pair[1].peer.IPv4)
			mustPing(t, pair[0].ctr, pair[1].peer.IPv6)
		}
	})

	t.Run("no neighbour entry, no traffic", func(t *testing.T) {
		// Without its neighbour entry the device cannot answer the ARP and
		// sends nothing into the tunnel: the request is dropped.
		dev := mustLink(t, h1.nl, testDev)
		if err := h1.nl.NeighDel(&netlink.Neigh{LinkIndex: dev.Attrs().Index, IP: h2.peer.IPv4.AsSlice()}); err != nil {
			t.Fatal(err)
		}
		forgetNeigh(t, h1.ctr, h2.peer.IPv4)
		before := stats(t, h1.nl, testDev)
		mustNotPing(t, h1.ctr, h2.peer.IPv4)
		after := stats(t, h1.nl, testDev)
		if after.TxPackets != before.TxPackets || after.TxDropped == before.TxDropped {
			t.Fatalf("tunnel tx %d→%d, dropped %d→%d: want no packet sent, the ARP dropped",
				before.TxPackets, after.TxPackets, before.TxDropped, after.TxDropped)
		}
		// The status shows what is missing; ensuring the device repairs it.
		sameEntryList(t, "missing", mustStatus(t, h1.ov).Missing, Entry{Kind: Neighbour, MAC: h2.peer.MAC, IP: h2.peer.IPv4})
		if err := h1.ov.EnsureDevice(ctx, h1.device()); err != nil {
			t.Fatal(err)
		}
		if st := mustStatus(t, h1.ov); len(st.Missing) != 0 {
			t.Fatalf("missing after repair: %v", st.Missing)
		}
		mustPing(t, h1.ctr, h2.peer.IPv4)
	})

	t.Run("removed peer, no traffic", func(t *testing.T) {
		if err := h1.ov.Remove(ctx, testVNI, h2.peer); err != nil {
			t.Fatal(err)
		}
		if got := kernelEntries(t, h1); len(got) != 0 {
			t.Fatalf("entries left after Remove: %v", got)
		}
		forgetNeigh(t, h1.ctr, h2.peer.IPv4)
		mustNotPing(t, h1.ctr, h2.peer.IPv4)
		if err := h1.ov.Add(ctx, testVNI, h2.peer); err != nil {
			t.Fatal(err)
		}
		// The failed ping left an ARP request pending, whose next try may
		// come later than the ping's deadline: ask afresh.
		forgetNeigh(t, h1.ctr, h2.peer.IPv4)
		mustPing(t, h1.ctr, h2.peer.IPv4)
	})

	stale := testPeer(9, "192.0.2.9")
	t.Run("resync removes a stale peer", func(t *testing.T) {
		if err := h1.ov.Sync(ctx, testVNI, []Peer{h2.peer, stale}); err != nil {
			t.Fatal(err)
		}
		withStale := kernelEntries(t, h1)
		if len(withStale) != 6 {
			t.Fatalf("entries with the stale peer: %v", withStale)
		}
		if err := h1.ov.Sync(ctx, testVNI, []Peer{h2.peer}); err != nil {
			t.Fatal(err)
		}
		got := kernelEntries(t, h1)
		if len(got) != 3 || slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, stale.MAC.String()) }) {
			t.Fatalf("entries after resync: %v", got)
		}
		mustPing(t, h1.ctr, h2.peer.IPv4)
	})

	t.Run("restart keeps traffic until the first sync", func(t *testing.T) {
		// A new Overlay (a restarted plugin) has an empty table: ensuring
		// the device must not wipe what the kernel holds.
		h1.ov.Close()
		h1.ov = newTestOverlay(outer, h1.ns)
		if err := h1.ov.Add(ctx, testVNI, stale); err != nil { // a change before the control plane's full set
			t.Fatal(err)
		}
		if err := h1.ov.EnsureDevice(ctx, h1.device()); err != nil {
			t.Fatal(err)
		}
		mustPing(t, h1.ctr, h2.peer.IPv4)
		st := mustStatus(t, h1.ov)
		if st.Synced {
			t.Fatal("synced before any Sync")
		}
		sameEntryList(t, "stale before sync", st.Stale, peerEntries(h2.peer)...)
		if err := h1.ov.Sync(ctx, testVNI, []Peer{h2.peer}); err != nil {
			t.Fatal(err)
		}
		if st := mustStatus(t, h1.ov); !st.Synced || len(st.Stale)+len(st.Missing) != 0 || len(st.Programmed) != 3 {
			t.Fatalf("after sync: %+v", st)
		}
		mustPing(t, h1.ctr, h2.peer.IPv4)
	})

	t.Run("delete leaves nothing", func(t *testing.T) {
		for i := 0; i < 2; i++ { // a device already gone is success
			if err := h1.ov.DeleteDevice(ctx, testVNI); err != nil {
				t.Fatalf("DeleteDevice run %d: %v", i+1, err)
			}
		}
		if _, err := h1.nl.LinkByName(testDev); !kernel.LinkNotFound(err) {
			t.Fatalf("device after delete: %v", err)
		}
		fdb, err := h1.nl.NeighList(0, unix.AF_BRIDGE)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range fdb {
			if n.IP != nil {
				t.Fatalf("FDB entry left: %+v", n)
			}
		}
		if st := mustStatus(t, h1.ov); st.Device != "" || len(st.Wanted)+len(st.Programmed)+len(st.Missing) != 0 || st.Synced {
			t.Fatalf("status after delete: %+v", st)
		}
		if vnis, err := h1.ov.Devices(ctx); err != nil || len(vnis) != 0 {
			t.Fatalf("Devices after delete: %v, %v", vnis, err)
		}
		if mustLink(t, h1.nl, "vc2").Attrs().MasterIndex != mustLink(t, h1.nl, "br0").Attrs().Index {
			t.Fatal("the container's veth left the bridge")
		}
		mustNotPing(t, h1.ctr, h2.peer.IPv4)
	})
}

// checkDevice checks the settings EnsureDevice promises, read back from
// the kernel.
func checkDevice(t *testing.T, h *testHost) {
	t.Helper()
	v, ok := mustLink(t, h.nl, testDev).(*netlink.Vxlan)
	if !ok {
		t.Fatalf("%s is not a vxlan device", testDev)
	}
	if v.VxlanId != testVNI || !v.SrcAddr.Equal(h.vtep.AsSlice()) || v.Port != Port || v.Learning || !v.Proxy ||
		v.L2miss || v.L3miss || v.MTU != ovMTU || v.MasterIndex != mustLink(t, h.nl, "br0").Attrs().Index ||
		v.OperState == netlink.OperDown || v.Flags&net.FlagUp == 0 {
		t.Fatalf("device settings: %+v", v)
	}
}

// neighMAC is the MAC the container's neighbour table holds for ip.
func neighMAC(t *testing.T, ctr netns.NsHandle, ip netip.Addr) string {
	t.Helper()
	h := handleAt(t, ctr)
	ns, err := h.NeighList(0, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.IP.Equal(ip.AsSlice()) {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

// forgetNeigh drops the container's neighbour entry for ip, so its next
// packet to ip needs an ARP again.
func forgetNeigh(t *testing.T, ctr netns.NsHandle, ip netip.Addr) {
	t.Helper()
	h := handleAt(t, ctr)
	eth := mustLink(t, h, "eth0")
	if err := h.NeighDel(&netlink.Neigh{LinkIndex: eth.Attrs().Index, IP: ip.AsSlice()}); err != nil && err != unix.ENOENT {
		t.Fatal(err)
	}
}
