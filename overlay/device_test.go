package overlay

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// oneHost is a namespace with an underlay address 192.0.2.1 (on a veth)
// and a bridge br0, for device tests.
func oneHost(t *testing.T) (*testHost, Device) {
	t.Helper()
	needRoot(t)
	h := &testHost{vtep: netip.MustParseAddr("192.0.2.1")}
	h.ns, h.nl = newNS(t)
	addVeth(t, h.nl, "ul0")
	addAddr(t, h.nl, mustLink(t, h.nl, "ul0"), "192.0.2.1/24")
	linkUp(t, h.nl, "ul0")
	addBridge(t, h.nl, 1, ovMTU)
	h.ov = newTestOverlay(t, h.ns)
	return h, Device{VNI: 42, Local: h.vtep, MTU: ovMTU, Bridge: "br0"}
}

// addVeth adds a veth pair, name and name-peer (this kernel has no dummy).
func addVeth(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	addLink(t, h, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "-peer"})
}

func addLink(t *testing.T, h *netlink.Handle, l netlink.Link) {
	t.Helper()
	if err := h.LinkAdd(l); err != nil {
		t.Fatalf("add %s: %v", l.Attrs().Name, err)
	}
}

func linkNames(t *testing.T, h *netlink.Handle) string {
	t.Helper()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Type()+":"+l.Attrs().Name)
	}
	return strings.Join(names, " ")
}

// Each refused EnsureDevice names the problem and leaves the links as
// they were.
func TestEnsureDeviceRefuses(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		prepare func(*testing.T, *testHost, *Device)
		want    string
	}{
		{"bridge missing", func(t *testing.T, h *testHost, d *Device) { d.Bridge = "nobr" },
			"vxlan device vxo-42: bridge nobr does not exist"},
		{"bridge not a bridge", func(t *testing.T, h *testHost, d *Device) { d.Bridge = "ul0" },
			"vxlan device vxo-42: ul0 is a veth, not a bridge"},
		{"local address not on the host", func(t *testing.T, h *testHost, d *Device) { d.Local = netip.MustParseAddr("192.0.2.99") },
			"local VTEP address 192.0.2.99 is not an address of this host"},
		{"name held by another kind", func(t *testing.T, h *testHost, d *Device) {
			addVeth(t, h.nl, "vxo-42")
		}, "create vxlan device vxo-42: an interface of type veth has that name"},
		{"name held with another VNI", func(t *testing.T, h *testHost, d *Device) {
			addLink(t, h.nl, &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vxo-42"}, VxlanId: 43, Port: Port})
		}, "create vxlan device vxo-42: it exists with VNI 43"},
		{"VNI used by another device", func(t *testing.T, h *testHost, d *Device) {
			addLink(t, h.nl, &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "other"}, VxlanId: 42, Port: Port})
		}, "VNI 42 is already used by vxlan device other"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, d := oneHost(t)
			c.prepare(t, h, &d)
			before := linkNames(t, h.nl)
			err := h.ov.EnsureDevice(ctx, d)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("EnsureDevice = %v, want an error with %q", err, c.want)
			}
			t.Logf("refused: %v", err)
			if after := linkNames(t, h.nl); after != before {
				t.Fatalf("links changed: before %s, after %s", before, after)
			}
		})
	}
}

// A device that fails after it was made (here: the VXLAN port is taken,
// so it cannot come up) is removed again.
func TestEnsureDeviceUndoesHalfMade(t *testing.T) {
	h, d := oneHost(t)
	var sock net.PacketConn
	var err error
	inNS(t, h.ns, func() { sock, err = net.ListenPacket("udp4", "0.0.0.0:4789") })
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	before := linkNames(t, h.nl)
	err = h.ov.EnsureDevice(context.Background(), d)
	if err == nil || !strings.Contains(err.Error(), "set vxlan device vxo-42 up") {
		t.Fatalf("EnsureDevice with the port taken = %v", err)
	}
	t.Logf("refused: %v", err)
	if after := linkNames(t, h.nl); after != before {
		t.Fatalf("links changed: before %s, after %s", before, after)
	}
}

// EnsureDevice repairs a device in place where it can, and replaces one
// whose settings can only be set at creation.
func TestEnsureDeviceRepairs(t *testing.T) {
	h, d := oneHost(t)
	ctx := context.Background()
	ensure := func() *netlink.Vxlan {
		t.Helper()
		if err := h.ov.EnsureDevice(ctx, d); err != nil {
			t.Fatal(err)
		}
		v := mustLink(t, h.nl, "vxo-42").(*netlink.Vxlan)
		if v.Learning || !v.Proxy || v.MTU != d.MTU || v.MasterIndex != mustLink(t, h.nl, "br0").Attrs().Index || v.Flags&net.FlagUp == 0 {
			t.Fatalf("device not as ensured: %+v", v)
		}
		return v
	}

	// Made by hand with learning on and proxy off: replaced.
	addLink(t, h.nl, &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vxo-42"}, VxlanId: 42, Port: Port, Learning: true, SrcAddr: h.vtep.AsSlice()})
	handMade := mustLink(t, h.nl, "vxo-42").Attrs().Index
	v := ensure()
	if v.Index == handMade {
		t.Fatal("a device with learning on was kept")
	}
	// Peers are programmed on the new device.
	p := testPeer(3, "192.0.2.2")
	if err := h.ov.Add(ctx, 42, p); err != nil {
		t.Fatal(err)
	}

	// MTU, bridge and up are set in place: same device, entries kept.
	d.MTU = 1400
	if err := h.nl.LinkSetNoMaster(v); err != nil {
		t.Fatal(err)
	}
	if err := h.nl.LinkSetDown(v); err != nil {
		t.Fatal(err)
	}
	if again := ensure(); again.Index != v.Index {
		t.Fatal("the device was re-created for a change it could take in place")
	}
	st, err := h.ov.Status(ctx, 42)
	if err != nil || len(st.Programmed) != 3 || len(st.Missing) != 0 {
		t.Fatalf("status after repair: %+v, %v", st, err)
	}

	// A new local address re-creates the device, and its peers are
	// programmed again.
	addAddr(t, h.nl, mustLink(t, h.nl, "ul0"), "192.0.2.5/24")
	d.Local = netip.MustParseAddr("192.0.2.5")
	moved := ensure()
	if moved.Index == v.Index || !moved.SrcAddr.Equal(d.Local.AsSlice()) {
		t.Fatalf("local address change: %+v", moved)
	}
	if st, err := h.ov.Status(ctx, 42); err != nil || len(st.Programmed) != 3 || len(st.Missing) != 0 {
		t.Fatalf("status after re-creation: %+v, %v", st, err)
	}

	// Devices lists ours only.
	addLink(t, h.nl, &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "other"}, VxlanId: 7, Port: Port})
	addVeth(t, h.nl, "vxo-8")
	if vnis, err := h.ov.Devices(ctx); err != nil || len(vnis) != 1 || vnis[0] != 42 {
		t.Fatalf("Devices = %v, %v", vnis, err)
	}
}

// Each remote endpoint is reported once, when its entries first reach the
// kernel: not again on a later Sync, not for entries the kernel already
// held (a restarted plugin), not for a peer behind this host's own VTEP.
func TestProgrammedObserved(t *testing.T) {
	h, d := oneHost(t)
	ctx := context.Background()
	type seen struct{ advertised, given, programmed time.Time }
	var got []seen
	ov := newOverlay(handleAt(t, h.ns), quietLog(), func(a, g, p time.Time) { got = append(got, seen{a, g, p}) })
	t.Cleanup(ov.Close)

	// Given before the device exists: programmed (and reported) when
	// EnsureDevice makes it.
	p3 := testPeer(3, "192.0.2.2")
	p3.Advertised = time.Now().Add(-2 * time.Second)
	if err := ov.Add(ctx, 42, p3); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := ov.EnsureDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got[0].advertised.Equal(p3.Advertised) || got[0].programmed.Sub(got[0].given) < 10*time.Millisecond ||
		got[0].programmed.Sub(got[0].advertised) < 2*time.Second {
		t.Fatalf("after EnsureDevice: reports %+v, want one for the peer advertised 2 s ago, given 10 ms before", got)
	}
	p4 := testPeer(4, "192.0.2.3")
	local := testPeer(5, h.vtep.String()) // on this host's own bridge: never programmed
	for range 2 {
		if err := ov.Sync(ctx, 42, []Peer{p3, p4, local}); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 2 || !got[1].advertised.IsZero() {
		t.Fatalf("after syncing a new peer twice: reports %+v, want one more, with no advertised time", got)
	}
	// A restarted plugin finds the entries in place: nothing to report.
	again := newOverlay(handleAt(t, h.ns), quietLog(), func(a, g, p time.Time) { got = append(got, seen{a, g, p}) })
	t.Cleanup(again.Close)
	if err := again.Sync(ctx, 42, []Peer{p3, p4}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("a restart reported entries the kernel held: %+v", got)
	}
}
