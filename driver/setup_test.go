package driver

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxbridge/vxbridge/store"
)

// inNewNetns runs fn in a fresh network namespace on a locked thread, so
// kernel steps are tested without touching the host. Needs root; CI runs
// these as root. Goroutines that fn starts run on other threads, in the
// host's namespace: they must use inTestNetns.
func inNewNetns(t testing.TB, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace (CI runs it as root)")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // unshares and switches this thread
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	defer netns.Set(orig)
	testNetns = ns
	fn()
}

// testNetns is the namespace of the running inNewNetns.
var testNetns netns.NsHandle

// inTestNetns runs fn on a thread switched into the test's namespace, for
// goroutines started inside inNewNetns.
func inTestNetns(fn func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		panic(err)
	}
	defer orig.Close()
	if err := netns.Set(testNetns); err != nil {
		panic(err)
	}
	defer netns.Set(orig)
	fn()
}

// newTestDriver returns a driver on a fresh state file, for use inside
// inNewNetns.
func newTestDriver(t testing.TB) *Driver {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	d, err := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testNetwork() *Network {
	return &Network{
		ID:       strings.Repeat("ab", 32),
		Options:  netOptions{Bridge: "vxb-test", MTU: 1400, ICC: true, IPv6: true},
		Gateway4: netip.MustParsePrefix("10.9.0.1/24"),
		Gateway6: netip.MustParsePrefix("fd09::1/64"),
	}
}

func TestBridgeAndVeth(t *testing.T) {
	inNewNetns(t, func() {
		n := testNetwork()
		for i := 0; i < 2; i++ { // a second run must be a no-op
			if err := ensureBridge(n); err != nil {
				t.Fatalf("ensureBridge run %d: %v", i+1, err)
			}
		}
		br, err := netlink.LinkByName("vxb-test")
		if err != nil {
			t.Fatal(err)
		}
		if br.Attrs().MTU != 1400 || br.Attrs().Flags&(1<<0) == 0 {
			t.Fatalf("bridge MTU %d flags %v", br.Attrs().MTU, br.Attrs().Flags)
		}
		addrs, _ := netlink.AddrList(br, netlink.FAMILY_ALL)
		var got []string
		for _, a := range addrs {
			got = append(got, a.IPNet.String())
		}
		if s := strings.Join(got, " "); !strings.Contains(s, "10.9.0.1/24") || !strings.Contains(s, "fd09::1/64") {
			t.Fatalf("bridge addresses %s", s)
		}

		ep := &Endpoint{ID: "e1", HostIf: "vxv-e1", PeerIf: "vxc-e1", MAC: macFor(netip.MustParsePrefix("10.9.0.2/24"))}
		if err := createVeth(ep, "vxb-test", 1400); err != nil {
			t.Fatal(err)
		}
		host, _ := netlink.LinkByName("vxv-e1")
		peer, _ := netlink.LinkByName("vxc-e1")
		if host == nil || peer == nil || host.Attrs().MasterIndex != br.Attrs().Index {
			t.Fatalf("veth not made or not on the bridge")
		}
		if peer.Attrs().HardwareAddr.String() != "02:42:0a:09:00:02" || peer.Attrs().MTU != 1400 {
			t.Fatalf("peer MAC %s MTU %d", peer.Attrs().HardwareAddr, peer.Attrs().MTU)
		}
		// A duplicate endpoint fails with the name of the veth.
		if err := createVeth(ep, "vxb-test", 1400); err == nil || !strings.Contains(err.Error(), "vxv-e1") {
			t.Fatalf("duplicate veth: %v", err)
		}
		if err := deleteLink("veth", "vxv-e1"); err != nil || linkExists("vxc-e1") {
			t.Fatalf("deleteVeth: %v", err)
		}
		if err := deleteLink("veth", "vxv-e1"); err != nil {
			t.Fatalf("second deleteVeth: %v", err)
		}
		if err := deleteLink("bridge", "vxb-test"); err != nil || linkExists("vxb-test") {
			t.Fatalf("deleteBridge: %v", err)
		}
	})
}

func TestBridgeNameHeldByAnotherKind(t *testing.T) {
	inNewNetns(t, func() {
		la := netlink.NewLinkAttrs()
		la.Name = "vxb-test"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "vxb-peer"}); err != nil {
			t.Fatal(err)
		}
		if err := ensureBridge(testNetwork()); err == nil || !strings.Contains(err.Error(), "veth") {
			t.Fatalf("want an error naming the other interface type, got %v", err)
		}
	})
}

func TestFirewallRules(t *testing.T) {
	inNewNetns(t, func() {
		fw, err := newFirewall()
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if err := fw.setup(); err != nil {
				t.Fatal(err)
			}
		}
		n := testNetwork()
		ep := &Endpoint{ID: "e1", NetworkID: n.ID, Addr4: netip.MustParsePrefix("10.9.0.2/24"),
			Ports: []PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}}
		rules := append(networkRules(n), endpointPortRules(n, ep)...)
		for i := 0; i < 2; i++ { // idempotent: no duplicates on a second run
			if err := fw.ensure(rules, true); err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range rules {
			for _, ipt := range fw.tables(r, true) {
				if ok, err := ipt.Exists(r.table, r.chain, r.spec...); err != nil || !ok {
					t.Fatalf("rule %v missing in %s: %v", r.spec, r.chain, err)
				}
			}
		}
		for _, ipt := range []*iptables.IPTables{fw.v4, fw.v6} {
			fwd, _ := ipt.List("filter", "FORWARD")
			if c := strings.Count(strings.Join(fwd, "\n"), "-j "+chainForward); c != 1 {
				t.Fatalf("%d jumps to %s in FORWARD:\n%s", c, chainForward, strings.Join(fwd, "\n"))
			}
		}
		v4rules := 0
		for _, c := range chains {
			l, _ := fw.v4.List(c.table, c.name)
			for _, x := range l {
				if strings.Contains(x, "vxbridge:") {
					v4rules++
				}
			}
		}
		want4 := 0
		for _, r := range rules {
			if r.family != v6only {
				want4++
			}
		}
		if v4rules != want4 {
			t.Fatalf("%d tagged IPv4 rules after two runs, want %d", v4rules, want4)
		}
		if err := fw.remove(rules, true); err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			for _, ipt := range fw.tables(r, true) {
				if ok, _ := ipt.Exists(r.table, r.chain, r.spec...); ok {
					t.Fatalf("rule %v left after remove", r.spec)
				}
			}
		}
	})
}

// dockerd keeps DOCKER-USER first in FORWARD and ends it with RETURN; the
// isolation jump goes last before that RETURN (so a user's inserted rules
// still win), once, and comes back when removed.
func TestIsolationReachedFromDockerUser(t *testing.T) {
	inNewNetns(t, func() {
		fw, err := newFirewall()
		if err != nil {
			t.Fatal(err)
		}
		if err := fw.v4.NewChain("filter", dockerUser); err != nil {
			t.Fatal(err)
		}
		for _, spec := range [][]string{{"-s", "192.0.2.1", "-j", "ACCEPT"}, {"-j", "RETURN"}} {
			if err := fw.v4.Append("filter", dockerUser, spec...); err != nil {
				t.Fatal(err)
			}
		}
		if err := fw.v4.Insert("filter", "FORWARD", 1, "-j", dockerUser); err != nil {
			t.Fatal(err)
		}
		want := []string{
			"-N " + dockerUser,
			"-A " + dockerUser + " -s 192.0.2.1/32 -j ACCEPT",
			"-A " + dockerUser + " -j " + chainIsolation1,
			"-A " + dockerUser + " -j RETURN",
		}
		for i := 0; i < 3; i++ {
			if i == 2 { // a flush by hand: the next setup puts it back
				if err := fw.v4.Delete("filter", dockerUser, "-j", chainIsolation1); err != nil {
					t.Fatal(err)
				}
			}
			if err := fw.setup(); err != nil {
				t.Fatal(err)
			}
			if got, _ := fw.v4.List("filter", dockerUser); !slices.Equal(got, want) {
				t.Fatalf("run %d: DOCKER-USER is\n%s\nwant\n%s", i, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
		fwd, _ := fw.v4.List("filter", "FORWARD")
		if len(fwd) < 3 || fwd[1] != "-A FORWARD -j "+dockerUser || fwd[2] != "-A FORWARD -j "+chainForward {
			t.Fatalf("FORWARD is\n%s\nwant DOCKER-USER's jump, then ours", strings.Join(fwd, "\n"))
		}
	})
}

func TestRouteLocalnetSetOverNetlink(t *testing.T) {
	inNewNetns(t, func() {
		if err := ensureBridge(testNetwork()); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/vxb-test/route_localnet")
		if err != nil || strings.TrimSpace(string(b)) != "1" {
			t.Fatalf("route_localnet = %q, %v; want 1", b, err)
		}
	})
}

// A bridge holds 1023 ports; the endpoint that finds it full fails naming
// the cause and leaves no veth behind.
func TestFullBridgeLeavesNoVeth(t *testing.T) {
	inNewNetns(t, func() {
		n := testNetwork()
		if err := ensureBridge(n); err != nil {
			t.Fatal(err)
		}
		br, err := netlink.LinkByName(n.Options.Bridge)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			la := netlink.NewLinkAttrs()
			la.Name = fmt.Sprintf("port%d", i)
			la.MasterIndex = br.Attrs().Index
			port := &netlink.Veth{LinkAttrs: la, PeerName: fmt.Sprintf("peer%d", i)}
			if err := netlink.LinkAdd(port); err != nil {
				if !errors.Is(err, unix.EXFULL) {
					t.Fatalf("port %d: %v", i, err)
				}
				netlink.LinkDel(port) // netlink leaves it, as it left our veths
				break
			}
		}
		ep := &Endpoint{ID: "e1", HostIf: "vxv-e1", PeerIf: "vxc-e1", MAC: macFor(netip.MustParsePrefix("10.9.0.2/24"))}
		err = createVeth(ep, n.Options.Bridge, n.Options.MTU)
		for _, name := range []string{ep.HostIf, ep.PeerIf} {
			if linkExists(name) {
				t.Fatalf("veth %s left behind by the failed endpoint (%v)", name, err)
			}
		}
		if !errors.Is(err, unix.EXFULL) || !strings.Contains(err.Error(), "vxv-e1") || !strings.Contains(err.Error(), n.Options.Bridge) {
			t.Fatalf("want an error naming the veth, the bridge and that it is full, got %v", err)
		}
	})
}

// What comes from a bridge for 127.0.0.0/8 is dropped in raw PREROUTING,
// before NAT (so the answers to the host's own 127.0.0.1 connections,
// addressed to the gateway until conntrack undoes the masquerade, pass),
// for every network, internal ones included. DNATed connections return
// from ISOLATION-2 and -3 first; an internal network's drops sit in
// ISOLATION-1, where that exemption does not reach.
func TestLoopbackDropAndIsolationPlacement(t *testing.T) {
	inNewNetns(t, func() {
		fw, err := newFirewall()
		if err != nil {
			t.Fatal(err)
		}
		if err := fw.v4.Insert("raw", "PREROUTING", 1, "-j", "ACCEPT"); err != nil { // someone else's rule
			t.Fatal(err)
		}
		if err := fw.setup(); err != nil {
			t.Fatal(err)
		}
		open, internal := testNetwork(), testNetwork()
		internal.ID = strings.Repeat("cd", 32)
		internal.Options.Bridge, internal.Options.Internal = "vxb-int", true
		for _, n := range []*Network{open, internal} {
			if err := fw.ensure(networkRules(n), n.Options.IPv6); err != nil {
				t.Fatal(err)
			}
		}
		want := map[string][]string{
			"raw PREROUTING": {"-P PREROUTING ACCEPT", "-A PREROUTING -j " + chainLoopback, "-A PREROUTING -j " + chainNotrack, "-A PREROUTING -j ACCEPT"},
			"raw " + chainLoopback: {"-N " + chainLoopback,
				`-A ` + chainLoopback + ` -d 127.0.0.0/8 -i vxb-test -m comment --comment "vxbridge:` + open.ID[:12] + `" -j DROP`,
				`-A ` + chainLoopback + ` -d 127.0.0.0/8 -i vxb-int -m comment --comment "vxbridge:` + internal.ID[:12] + `" -j DROP`},
		}
		for _, c := range []string{chainIsolation2, chainIsolation3} {
			want["filter "+c] = []string{"-N " + c, "-A " + c + " -m conntrack --ctstate DNAT -j RETURN"} // the first rules
		}
		for where, w := range want {
			table, chain, _ := strings.Cut(where, " ")
			got, err := fw.v4.List(table, chain)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) > len(w) && strings.HasPrefix(chain, "VXBRIDGE-ISOLATION") {
				got = got[:len(w)]
			}
			if !slices.Equal(got, w) {
				t.Fatalf("%s is\n%s\nwant\n%s", where, strings.Join(got, "\n"), strings.Join(w, "\n"))
			}
		}
		iso1, _ := fw.v4.List("filter", chainIsolation1)
		for _, r := range []string{"-i vxb-int ! -o vxb-int", "! -i vxb-int -o vxb-int"} {
			if !slices.Contains(iso1, "-A "+chainIsolation1+" "+r+` -m comment --comment "vxbridge:`+internal.ID[:12]+`" -j DROP`) {
				t.Fatalf("no drop %q for the internal network in %s:\n%s", r, chainIsolation1, strings.Join(iso1, "\n"))
			}
		}
		if l, _ := fw.v6.List("raw", chainLoopback); len(l) != 1 {
			t.Fatalf("IPv6 has no route_localnet, so no loopback rules; got\n%s", strings.Join(l, "\n"))
		}
	})
}

// The bridge's MAC is the gateway's own, set explicitly: ports with lower
// MACs do not change it (a bridge whose MAC was never set takes its lowest
// port's), a bridge made without it gets it, and a re-made bridge has the
// same one.
func TestBridgeMACStaysTheGateways(t *testing.T) {
	inNewNetns(t, func() {
		n := testNetwork()
		want := "02:42:0a:09:00:01" // from the gateway 10.9.0.1
		mac := func() string {
			t.Helper()
			br, err := netlink.LinkByName(n.Options.Bridge)
			if err != nil {
				t.Fatal(err)
			}
			return br.Attrs().HardwareAddr.String()
		}
		if err := ensureBridge(n); err != nil {
			t.Fatal(err)
		}
		if got := mac(); got != want {
			t.Fatalf("new bridge's MAC %s, want %s", got, want)
		}
		for i, low := range []string{"00:00:00:00:00:02", "00:00:00:00:00:01"} {
			la := netlink.NewLinkAttrs()
			la.Name = fmt.Sprintf("vxv-low%d", i)
			la.HardwareAddr, _ = net.ParseMAC(low)
			la.MasterIndex = mustLink(t, n.Options.Bridge).Attrs().Index
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: fmt.Sprintf("vxc-low%d", i)}); err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetUp(mustLink(t, la.Name)); err != nil {
				t.Fatal(err)
			}
		}
		if got := mac(); got != want {
			t.Fatalf("MAC after ports with lower MACs joined: %s, want %s", got, want)
		}
		// A bridge made by an earlier version took its lowest port's MAC;
		// the next ensure gives it the gateway's, and announces it.
		mustDel(t, n.Options.Bridge)
		la := netlink.NewLinkAttrs()
		la.Name = n.Options.Bridge
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetMaster(mustLink(t, "vxv-low1"), mustLink(t, n.Options.Bridge)); err != nil {
			t.Fatal(err)
		}
		if got := mac(); got != "00:00:00:00:00:01" {
			t.Fatalf("an unset bridge MAC is %s: the kernel did not take the lowest port's", got)
		}
		if err := ensureBridge(n); err != nil {
			t.Fatal(err)
		}
		if got := mac(); got != want {
			t.Fatalf("an earlier version's bridge: MAC %s, want %s", got, want)
		}
		if b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + n.Options.Bridge + "/arp_notify"); err != nil || strings.TrimSpace(string(b)) != "1" {
			t.Fatalf("arp_notify = %q, %v; want 1", b, err)
		}
	})
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
