package driver

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
)

// The resolver's addresses: added, usable at once, untouched when in
// place, added again when one is gone, and kept by Repair.
func TestResolverAddrs(t *testing.T) {
	inNewNetns(t, func() {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			t.Fatal(err)
		}
		changed, v6, err := EnsureResolverAddrs()
		if err != nil || !changed || !v6 {
			t.Fatalf("first EnsureResolverAddrs: changed %v, v6 %v, %v", changed, v6, err)
		}
		for _, a := range []string{"169.254.53.53:53", "[fd53:7862:7264::53]:53"} {
			pc, err := net.ListenPacket("udp", a)
			if err != nil {
				t.Fatalf("bind %s: %v", a, err)
			}
			pc.Close()
		}
		if changed, _, err := EnsureResolverAddrs(); err != nil || changed {
			t.Fatalf("second EnsureResolverAddrs: changed %v, %v; want nothing to do", changed, err)
		}
		if _, err := newTestDriver(t).Repair(nil); err != nil {
			t.Fatal(err)
		}
		for _, a := range []string{"169.254.53.53/32", "fd53:7862:7264::53/128"} {
			addr, _ := netlink.ParseAddr(a)
			if err := netlink.AddrDel(lo, addr); err != nil {
				t.Fatalf("%s after Repair: %v", a, err)
			}
		}
		if changed, v6, err := EnsureResolverAddrs(); err != nil || !changed || !v6 {
			t.Fatalf("EnsureResolverAddrs with the addresses gone: changed %v, v6 %v, %v", changed, v6, err)
		}
	})
}
