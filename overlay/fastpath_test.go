package overlay

import (
	"context"
	"fmt"
	"testing"

	"github.com/vishvananda/netlink"
)

// The fast path carries traffic between the two containers without their
// bridges: with each container's veth taken off its bridge, pings still
// go both ways, and stop once the fast path is withdrawn.
func TestFastPathSkipsTheBridge(t *testing.T) {
	h1, h2 := twoHosts(t)
	ctx := context.Background()
	hosts := []*testHost{h1, h2}
	for i, h := range hosts {
		if err := h.ov.EnsureDevice(ctx, h.device()); err != nil {
			t.Fatal(err)
		}
		if err := h.ov.Add(ctx, testVNI, hosts[1-i].peer); err != nil {
			t.Fatal(err)
		}
	}
	veth := func(i int) string { return fmt.Sprintf("vc%d", i+2) } // addContainer's names
	setPorts := func(on bool) {
		t.Helper()
		for i, h := range hosts {
			var ls []Local
			if on {
				ls = []Local{{MAC: h.peer.MAC, Link: veth(i)}}
			}
			if err := h.ov.SetPorts(ctx, testVNI, ls); err != nil {
				t.Fatal(err)
			}
		}
	}
	setPorts(true)
	setPorts(true) // a second run changes nothing
	for i, h := range hosts {
		dev, port := mustLink(t, h.nl, testDev), mustLink(t, h.nl, veth(i))
		out, err := redirects(h.nl, port.Attrs().Index)
		if err != nil {
			t.Fatal(err)
		}
		if want := (redirect{dst: mac(hosts[1-i].peer.MAC), to: dev.Attrs().Index}); len(out) != 1 || out[want] == 0 {
			t.Fatalf("host %d: filters on %s: %v, want %v", i+1, veth(i), out, want)
		}
		in, err := redirects(h.nl, dev.Attrs().Index)
		if err != nil {
			t.Fatal(err)
		}
		if want := (redirect{dst: mac(h.peer.MAC), to: port.Attrs().Index}); len(in) != 1 || in[want] == 0 {
			t.Fatalf("host %d: filters on %s: %v, want %v", i+1, testDev, in, want)
		}
	}
	// Through the bridges first: the ARP (broadcast) is answered there.
	mustPing(t, h1.ctr, h2.peer.IPv4)
	mustPing(t, h2.ctr, h1.peer.IPv4)
	for i, h := range hosts {
		if err := h.nl.LinkSetNoMaster(mustLink(t, h.nl, veth(i))); err != nil {
			t.Fatal(err)
		}
	}
	mustPing(t, h1.ctr, h2.peer.IPv4)
	mustPing(t, h2.ctr, h1.peer.IPv4)

	setPorts(false)
	for i, h := range hosts {
		for _, name := range []string{veth(i), testDev} {
			if got, err := redirects(h.nl, mustLink(t, h.nl, name).Attrs().Index); err != nil || len(got) != 0 {
				t.Fatalf("host %d: filters on %s after the ports went: %v %v", i+1, name, got, err)
			}
		}
	}
	mustNotPing(t, h1.ctr, h2.peer.IPv4)

	// Back on their bridges, with the fast path: a peer removed takes its
	// filter with it.
	for i, h := range hosts {
		if err := h.nl.LinkSetMaster(mustLink(t, h.nl, veth(i)), mustLink(t, h.nl, "br0")); err != nil {
			t.Fatal(err)
		}
	}
	setPorts(true)
	// A new peer adds its filter and leaves the others as they are.
	port := mustLink(t, h1.nl, veth(0)).Attrs().Index
	before, _ := redirects(h1.nl, port)
	third := testPeer(9, "192.0.2.9")
	if err := h1.ov.Add(ctx, testVNI, third); err != nil {
		t.Fatal(err)
	}
	after, _ := redirects(h1.nl, port)
	for r, handle := range before {
		if after[r] != handle {
			t.Fatalf("filter %v rewritten for another peer: handle %x, now %x", r, handle, after[r])
		}
	}
	if len(after) != 2 || after[redirect{dst: mac(third.MAC), to: mustLink(t, h1.nl, testDev).Attrs().Index}] == 0 {
		t.Fatalf("filters after a third peer: %v", after)
	}
	if err := h1.ov.Remove(ctx, testVNI, third); err != nil {
		t.Fatal(err)
	}
	if err := h1.ov.Remove(ctx, testVNI, h2.peer); err != nil {
		t.Fatal(err)
	}
	if got, _ := redirects(h1.nl, mustLink(t, h1.nl, veth(0)).Attrs().Index); len(got) != 0 {
		t.Fatalf("filters on %s after its peer went: %v", veth(0), got)
	}
}

// Status names a filter that sends frames astray and one that is missing;
// setting the ports again (what a Repair does) mends both.
func TestFastPathStatus(t *testing.T) {
	h1, h2 := twoHosts(t)
	ctx := context.Background()
	if err := h1.ov.EnsureDevice(ctx, h1.device()); err != nil {
		t.Fatal(err)
	}
	if err := h1.ov.Add(ctx, testVNI, h2.peer); err != nil {
		t.Fatal(err)
	}
	ports := []Local{{MAC: h1.peer.MAC, Link: "vc2"}}
	if err := h1.ov.SetPorts(ctx, testVNI, ports); err != nil {
		t.Fatal(err)
	}
	status := func() Status {
		t.Helper()
		st, err := h1.ov.Status(ctx, testVNI)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := status(); len(st.FastMissing)+len(st.FastStale) != 0 || st.FastOff != "" {
		t.Fatalf("healthy fast path: missing %v, stale %v, off %q", st.FastMissing, st.FastStale, st.FastOff)
	}
	port, dev := mustLink(t, h1.nl, "vc2").Attrs().Index, mustLink(t, h1.nl, testDev).Attrs().Index
	stray := testPeer(7, "192.0.2.7")
	if err := h1.nl.FilterAdd(redirectFilter(port, redirect{dst: mac(stray.MAC), to: dev})); err != nil {
		t.Fatal(err)
	}
	have, _ := redirects(h1.nl, dev)
	for r, handle := range have {
		attrs := ingressAttrs(dev)
		attrs.Handle = handle
		if err := h1.nl.FilterDel(&netlink.U32{FilterAttrs: attrs}); err != nil {
			t.Fatalf("delete %v: %v", r, err)
		}
	}
	st := status()
	wantStale := Redirect{Link: "vc2", MAC: stray.MAC, To: testDev}
	wantMissing := Redirect{Link: testDev, MAC: h1.peer.MAC, To: "vc2"}
	if len(st.FastStale) != 1 || st.FastStale[0].String() != wantStale.String() ||
		len(st.FastMissing) != 1 || st.FastMissing[0].String() != wantMissing.String() {
		t.Fatalf("broken fast path: stale %v, missing %v; want [%v] and [%v]", st.FastStale, st.FastMissing, wantStale, wantMissing)
	}
	if err := h1.ov.SetPorts(ctx, testVNI, ports); err != nil {
		t.Fatal(err)
	}
	if st := status(); len(st.FastMissing)+len(st.FastStale) != 0 {
		t.Fatalf("after the ports were set again: missing %v, stale %v", st.FastMissing, st.FastStale)
	}
}
