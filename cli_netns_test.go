package main

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/reconcile"
)

// containerNS makes a "container" namespace: eth0 (a veth whose peer
// stays beside it) with the endpoint's MAC and address, up, MTU 1500, a
// default route via 10.9.0.1. It returns a handle on it.
func containerNS(t *testing.T) *netlink.Handle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err == nil {
		err = netns.Set(orig)
	}
	orig.Close()
	if err != nil {
		t.Fatal(err) // the thread stays locked: it dies with the test goroutine
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	mac, _ := net.ParseMAC("02:42:0a:09:00:02")
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU, la.HardwareAddr = "eth0", 1500, mac
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "peer0"}))
	eth, err := h.LinkByName("eth0")
	must(err)
	peer, err := h.LinkByName("peer0")
	must(err)
	must(h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{10, 9, 0, 2}, Mask: net.CIDRMask(24, 32)}}))
	must(h.LinkSetUp(peer))
	must(h.LinkSetUp(eth))
	addDefault(t, h, "10.9.0.1")
	return h
}

func addDefault(t *testing.T, h *netlink.Handle, gw string) {
	t.Helper()
	eth, err := h.LinkByName("eth0")
	if err == nil {
		err = h.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP(gw)})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// The container's side names each broken piece, and only it.
func TestContainerSide(t *testing.T) {
	h := containerNS(t)
	n := &driver.Network{ID: "n1", Gateway4: netip.MustParsePrefix("10.9.0.1/24")}
	n.Options.MTU = 1500
	ep := &driver.Endpoint{ID: "e1", NetworkID: "n1", MAC: "02:42:0a:09:00:02", Addr4: netip.MustParsePrefix("10.9.0.2/24")}
	st := driver.State{Networks: []*driver.Network{n}, Endpoints: []*driver.Endpoint{ep}}
	var ct containerTarget
	ct.name = "web"
	ct.c.State.Pid, ct.c.State.Running = 4242, true
	ct.c.NetworkSettings.Networks = map[string]reconcile.ContainerNetwork{"front": {EndpointID: "e1"}, "bridge": {EndpointID: "not-ours"}}

	failed := func(what string) []driver.Check {
		t.Helper()
		var checks, bad []driver.Check
		containerSide(ct, st, h, func(name string, ok bool, fix string) {
			checks = append(checks, driver.Check{Name: name, OK: ok, Fix: fix})
			if !ok {
				bad = append(bad, checks[len(checks)-1])
			}
		})
		if len(checks) < 3 {
			t.Fatalf("%s: only %d checks: %+v", what, len(checks), checks)
		}
		t.Logf("%s: %+v", what, bad)
		return bad
	}
	one := func(what string, words ...string) {
		t.Helper()
		bad := failed(what)
		if len(bad) != 1 || !strings.Contains(bad[0].Fix, "fix:") {
			t.Fatalf("%s: failed %+v, want exactly one, with a fix", what, bad)
		}
		for _, w := range words {
			if !strings.Contains(bad[0].Name+" "+bad[0].Fix, w) {
				t.Fatalf("%s: %+v does not say %q", what, bad[0], w)
			}
		}
	}
	if bad := failed("healthy"); len(bad) != 0 {
		t.Fatalf("healthy: %+v", bad)
	}
	eth, _ := h.LinkByName("eth0")
	h.LinkSetDown(eth)
	one("eth0 down", "eth0 on front up", "nsenter -t 4242 -n ip link set eth0 up")
	h.LinkSetUp(eth)
	one("default route gone with it", "default route", "ip route add default via 10.9.0.1 dev eth0")
	addDefault(t, h, "10.9.0.1")
	h.LinkSetMTU(eth, 1400)
	one("MTU 1400", "eth0 on front MTU 1500", "its MTU is 1400")
	h.LinkSetMTU(eth, 1500)
	addDefault(t, h, "10.9.0.77")
	one("default route via another address", "default route via 10.9.0.1 on eth0", "via 10.9.0.77")
	addDefault(t, h, "10.9.0.1")
	h.AddrDel(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{10, 9, 0, 2}, Mask: net.CIDRMask(24, 32)}})
	// The route went with the address: only the address is named.
	one("address removed", "eth0 on front holds 10.9.0.2/24", "ip addr add 10.9.0.2/24 dev eth0")
	h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{10, 9, 0, 2}, Mask: net.CIDRMask(24, 32)}})
	// An internal network gives no gateway: no route is wanted.
	n.Options.Internal = true
	if bad := failed("internal, no route"); len(bad) != 0 {
		t.Fatalf("internal network without a default route: %+v", bad)
	}
	// The default route through another network (say Docker's bridge) is
	// not this network's business.
	n.Options.Internal = false
	peer, _ := h.LinkByName("peer0")
	h.AddrAdd(peer, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{172, 17, 0, 2}, Mask: net.CIDRMask(16, 32)}})
	if err := h.RouteReplace(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: net.IP{172, 17, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if bad := failed("default route through another network"); len(bad) != 0 {
		t.Fatalf("default route through another network: %+v", bad)
	}
}
