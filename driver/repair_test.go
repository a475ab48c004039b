package driver

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	api "github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"
)

func TestRepairRebuildsAndCleans(t *testing.T) {
	inNewNetns(t, func() {
		d := newTestDriver(t)
		nid, live, dead := strings.Repeat("1", 64), strings.Repeat("2", 64), strings.Repeat("3", 64)
		if err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Pool: "10.9.0.0/24", Gateway: "10.9.0.1/24"}}}); err != nil {
			t.Fatal(err)
		}
		for _, eid := range []string{live, dead} {
			if _, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Interface: &api.EndpointInterface{Address: "10.9.0.2/24"}}); err != nil {
				t.Fatal(err)
			}
		}
		// A reboot of the bridge and a firewall reload…
		bridge := bridgeName(nid)
		mustDel(t, bridge)
		if err := d.fw.v4.ClearChain("filter", chainForward); err != nil {
			t.Fatal(err)
		}
		// …a container that died unseen (its veth went with it)…
		mustDel(t, vethName(dead))
		// …and leftovers nobody owns.
		la := netlink.NewLinkAttrs()
		la.Name = "vxb-orphan"
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			t.Fatal(err)
		}
		la.Name = vethPrefix + "orphan"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "vxcorphan"}); err != nil {
			t.Fatal(err)
		}
		if err := d.fw.v4.Append("nat", chainPostrouting, spec([]string{"-s", "10.99.0.0/24"}, tag("deadbeef0000"), []string{"-j", "MASQUERADE"})...); err != nil {
			t.Fatal(err)
		}
		// A port rule left by a crash after its record said "unpublished".
		stray := portRules(&Network{ID: nid, Options: netOptions{Bridge: bridge}}, &Endpoint{ID: live, Addr4: netip.MustParsePrefix("10.9.0.2/24")}, PortBinding{Proto: "tcp", HostPort: 8080, ContainerPort: 80})
		if err := d.fw.ensure(stray, false); err != nil {
			t.Fatal(err)
		}

		rep, err := d.Repair(&Claims{})
		if err != nil {
			t.Fatal(err)
		}
		want := Repairs{Networks: 1, StaleEndpoints: 1, ReattachedVeths: 1, OrphanLinks: 2, OrphanRules: 1 + len(stray), RulesRestored: true}
		if !reflect.DeepEqual(rep, want) {
			t.Fatalf("repairs %+v, want %+v", rep, want)
		}
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			t.Fatalf("bridge not recreated: %v", err)
		}
		if v, err := netlink.LinkByName(vethName(live)); err != nil || v.Attrs().MasterIndex != br.Attrs().Index {
			t.Fatalf("live veth not back on its bridge: %v", err)
		}
		for _, gone := range []string{"vxb-orphan", vethPrefix + "orphan"} {
			if linkExists(gone) {
				t.Fatalf("orphan %s still exists", gone)
			}
		}
		if ok, _ := d.fw.v4.Exists("filter", chainIsolation1, networkRules(&Network{ID: nid, Options: netOptions{Bridge: bridge, ICC: true}})[0].spec...); !ok {
			t.Fatalf("ICC rule not re-asserted")
		}
		s, _ := d.State()
		if len(s.Endpoints) != 1 || s.Endpoints[0].ID != live {
			t.Fatalf("endpoints after repair: %+v", s.Endpoints)
		}
		// A second run finds nothing to do.
		if rep, err := d.Repair(&Claims{}); err != nil || rep.changed() {
			t.Fatalf("second repair: %+v, %v", rep, err)
		}
	})
}

func mustDel(t *testing.T, name string) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkDel(l)
	}
	if err != nil {
		t.Fatalf("delete %s: %v", name, err)
	}
}

func TestRepeatedRequestsAreIdempotent(t *testing.T) {
	inNewNetns(t, func() {
		d := newTestDriver(t)
		nid, eid := strings.Repeat("4", 64), strings.Repeat("5", 64)
		net := &api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Pool: "10.8.0.0/24", Gateway: "10.8.0.1/24"}}}
		for i := 0; i < 2; i++ {
			if err := d.CreateNetwork(net); err != nil {
				t.Fatalf("CreateNetwork run %d: %v", i+1, err)
			}
		}
		other := &api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Pool: "10.7.0.0/24", Gateway: "10.7.0.1/24"}}}
		if err := d.CreateNetwork(other); err == nil || !strings.Contains(err.Error(), "other settings") {
			t.Fatalf("CreateNetwork with other settings: %v", err)
		}
		ep := &api.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Interface: &api.EndpointInterface{Address: "10.8.0.2/24"}}
		first, err := d.CreateEndpoint(ep)
		if err != nil {
			t.Fatal(err)
		}
		again, err := d.CreateEndpoint(ep)
		if err != nil || again.Interface == nil || again.Interface.MacAddress != first.Interface.MacAddress {
			t.Fatalf("repeated CreateEndpoint: %+v, %v", again, err)
		}
		for i := 0; i < 2; i++ {
			if err := d.DeleteEndpoint(&api.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
				t.Fatalf("DeleteEndpoint run %d: %v", i+1, err)
			}
			if err := d.DeleteNetwork(&api.DeleteNetworkRequest{NetworkID: nid}); err != nil {
				t.Fatalf("DeleteNetwork run %d: %v", i+1, err)
			}
		}
		if linkExists(bridgeName(nid)) || linkExists(vethName(eid)) {
			t.Fatalf("links left after delete")
		}
	})
}

// An endpoint with published ports whose network record is gone (a crash
// part way through deleting the network) must not stop the plugin from
// starting: Repair drops it and its rules go as orphans.
func TestRepairDropsEndpointOfMissingNetwork(t *testing.T) {
	inNewNetns(t, func() {
		d := newTestDriver(t)
		n := testNetwork()
		ep := &Endpoint{ID: strings.Repeat("6", 64), NetworkID: n.ID, HostIf: vethName(strings.Repeat("6", 64)),
			Addr4: netip.MustParsePrefix("10.9.0.2/24"), Ports: []PortBinding{{Proto: "tcp", HostPort: 18555, ContainerPort: 80}}}
		if err := save(d.store, endpointKey(n.ID, ep.ID), ep); err != nil {
			t.Fatal(err)
		}
		if err := d.fw.ensure(endpointPortRules(n, ep), false); err != nil {
			t.Fatal(err)
		}
		rep, err := d.Repair(&Claims{})
		if err != nil {
			t.Fatalf("repair: %v", err)
		}
		if rep.StaleEndpoints != 1 || rep.OrphanRules != len(endpointPortRules(n, ep)) {
			t.Fatalf("repairs %+v: want 1 stale endpoint and its %d rules removed", rep, len(endpointPortRules(n, ep)))
		}
		if s, _ := d.State(); len(s.Endpoints) != 0 {
			t.Fatalf("endpoint still recorded: %+v", s.Endpoints)
		}
	})
}

// A network that cannot be repaired (its bridge name taken by another
// interface while the plugin was down) is reported, left as it is, and
// keeps nothing else from being repaired; it is retried and recovers once
// the name is free.
func TestRepairConfinesABrokenNetwork(t *testing.T) {
	inNewNetns(t, func() {
		d := newTestDriver(t)
		bad, good := strings.Repeat("a", 64), strings.Repeat("b", 64)
		for i, id := range []string{bad, good} {
			req := &api.CreateNetworkRequest{NetworkID: id, IPv4Data: []*api.IPAMData{{Gateway: fmt.Sprintf("10.%d.0.1/24", 50+i)}}}
			if id == bad {
				req.Options = map[string]interface{}{keyGeneric: map[string]interface{}{optBridgeName: "htbr1"}}
			}
			if err := d.CreateNetwork(req); err != nil {
				t.Fatal(err)
			}
		}
		// Another program takes the bad network's bridge name; the good
		// network's rules are flushed.
		mustDel(t, "htbr1")
		la := netlink.NewLinkAttrs()
		la.Name = "htbr1"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "htbr1-peer"}); err != nil {
			t.Fatal(err)
		}
		if err := d.fw.v4.ClearChain("filter", chainForward); err != nil {
			t.Fatal(err)
		}
		rep, err := d.Repair(&Claims{})
		if err != nil {
			t.Fatalf("repair stopped at the broken network: %v", err)
		}
		if len(rep.Broken) != 1 || rep.Broken[0].Network != bad || !strings.Contains(rep.Broken[0].Err, "htbr1") {
			t.Fatalf("broken = %+v, want the network of htbr1", rep.Broken)
		}
		if !rep.RulesRestored || rep.Networks != 1 {
			t.Fatalf("repairs %+v: the good network was not repaired", rep)
		}
		if !linkExists("htbr1") {
			t.Fatal("the other program's interface was deleted")
		}
		if s, _ := d.State(); len(s.Broken) != 1 || len(s.Networks) != 2 {
			t.Fatalf("state %+v: want both networks recorded and one broken", s)
		}
		_, err = d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: bad, EndpointID: strings.Repeat("c", 64), Interface: &api.EndpointInterface{Address: "10.50.0.2/24"}})
		if err == nil || !strings.Contains(err.Error(), "broken") {
			t.Fatalf("endpoint on the broken network: %v, want an error saying it is broken", err)
		}
		// Freed: the next pass repairs it.
		mustDel(t, "htbr1")
		if rep, err := d.Repair(&Claims{}); err != nil || len(rep.Broken) != 0 || rep.Networks != 2 {
			t.Fatalf("repair after the name was freed: %+v, %v", rep, err)
		}
		if _, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: bad, EndpointID: strings.Repeat("c", 64), Interface: &api.EndpointInterface{Address: "10.50.0.2/24"}}); err != nil {
			t.Fatalf("endpoint once repaired: %v", err)
		}
	})
}

// With its records lost, the driver deletes nothing while it may not
// prune, and adopting what dockerd still has (network, endpoint with its
// published ports) makes a pruning repair keep all of it.
func TestLostRecordsAreAdoptedNotDeleted(t *testing.T) {
	inNewNetns(t, func() {
		d := newTestDriver(t)
		nid, eid := strings.Repeat("d", 64), strings.Repeat("e", 64)
		if err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: nid, Options: map[string]interface{}{keyGeneric: map[string]interface{}{optMTU: "1400"}},
			IPv4Data: []*api.IPAMData{{Gateway: "10.60.0.1/24"}}}); err != nil {
			t.Fatal(err)
		}
		res, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Interface: &api.EndpointInterface{Address: "10.60.0.2/24"}})
		if err != nil {
			t.Fatal(err)
		}
		mac := res.Interface.MacAddress
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			t.Fatal(err)
		}
		portmap := []interface{}{map[string]interface{}{"Proto": 6, "Port": 80, "HostIP": "127.0.0.1", "HostPort": 18444, "HostPortEnd": 18444}}
		if err := d.ProgramExternalConnectivity(&api.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid, Options: map[string]interface{}{keyPortMap: portmap}}); err != nil {
			t.Fatal(err)
		}
		before, _ := d.State()
		// The state file is lost: a fresh store under the same kernel.
		d2 := newTestDriver(t)
		if rep, err := d2.Repair(nil); err != nil || rep.OrphanLinks+rep.OrphanRules != 0 {
			t.Fatalf("repair without pruning: %+v, %v", rep, err)
		}
		// Nor while dockerd claims them, before they are adopted.
		claims := &Claims{Networks: map[string]bool{nid: true}, Endpoints: map[string]string{eid: nid}, Bridges: map[string]bool{bridgeName(nid): true}}
		if rep, err := d2.Repair(claims); err != nil || rep.OrphanLinks+rep.OrphanRules != 0 {
			t.Fatalf("repair with dockerd's claims: %+v, %v", rep, err)
		}
		if !linkExists(bridgeName(nid)) || !linkExists(vethName(eid)) {
			t.Fatal("a repair that may not prune deleted the lost network's links")
		}
		if ok, err := d2.AdoptNetwork(NetworkInfo{ID: nid, Options: map[string]string{optMTU: "1400"}, Subnet4: netip.MustParsePrefix("10.60.0.0/24")}); !ok || err != nil {
			t.Fatalf("adopt network: %v %v", ok, err)
		}
		if ok, err := d2.AdoptEndpoint(nid, eid, mac, netip.MustParsePrefix("10.60.0.2/24"), netip.Prefix{}); !ok || err != nil {
			t.Fatalf("adopt endpoint: %v %v", ok, err)
		}
		// The gateway came from the bridge, the port from its rule.
		after, _ := d2.State()
		if !reflect.DeepEqual(after.Networks, before.Networks) || !reflect.DeepEqual(after.Endpoints, before.Endpoints) {
			t.Fatalf("adopted records differ:\n got %+v %+v\nwant %+v %+v", after.Networks[0], after.Endpoints[0], before.Networks[0], before.Endpoints[0])
		}
		if rep, err := d2.Repair(&Claims{}); err != nil || rep.OrphanLinks+rep.OrphanRules+rep.StaleEndpoints != 0 {
			t.Fatalf("pruning repair after adoption: %+v, %v", rep, err)
		}
		// Adopting again changes nothing.
		if ok, err := d2.AdoptNetwork(NetworkInfo{ID: nid, Subnet4: netip.MustParsePrefix("10.60.0.0/24")}); ok || err != nil {
			t.Fatalf("second adoption: %v %v", ok, err)
		}
	})
}

// Requests are validated at the socket: IDs are Docker's, addresses lie in
// the network's subnet.
func TestRequestValidation(t *testing.T) {
	inNewNetns(t, func() {
		d := newTestDriver(t)
		nid := strings.Repeat("f", 64)
		err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: "网络" + strings.Repeat("0", 58), IPv4Data: []*api.IPAMData{{Gateway: "10.70.0.1/24"}}})
		if err == nil || !strings.Contains(err.Error(), "malformed network ID") {
			t.Fatalf("unicode network ID: %v", err)
		}
		if err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Gateway: "10.70.0.1/24"}}}); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ eid, addr, want string }{
			{"short", "10.70.0.2/24", "malformed endpoint ID"},
			{strings.Repeat("A", 64), "10.70.0.2/24", "malformed endpoint ID"},
			{strings.Repeat("1", 64), "10.71.0.2/24", "not in the network's subnet"},
			{strings.Repeat("1", 64), "10.70.0.2/16", "not in the network's subnet"},
		} {
			_, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: c.eid, Interface: &api.EndpointInterface{Address: c.addr}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("endpoint %q %s: %v, want %q", c.eid, c.addr, err, c.want)
			}
		}
		if s, _ := d.State(); len(s.Endpoints) != 0 {
			t.Fatalf("a refused request left a record: %+v", s.Endpoints)
		}
	})
}

// An internal network upgraded from a version that kept its ICC rule and drops in
// VXBRIDGE-FORWARD: one repair removes them, and the next finds the
// chains intact.
func TestRepairRemovesLegacyInternalRules(t *testing.T) {
	inNewNetns(t, func() {
		d := newTestDriver(t)
		nid := strings.Repeat("9", 64)
		if err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: nid, Options: map[string]interface{}{keyInternal: true},
			IPv4Data: []*api.IPAMData{{Gateway: "10.80.0.1/24"}}}); err != nil {
			t.Fatal(err)
		}
		n, err := load[Network](d.store, networkKey(nid))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.fw.ensure(legacyRules(n), false); err != nil {
			t.Fatal(err)
		}
		if rep, err := d.Repair(&Claims{}); err != nil || !rep.RulesRestored {
			t.Fatalf("first repair: %+v, %v", rep, err)
		}
		for _, r := range legacyRules(n) {
			if ok, _ := d.fw.v4.Exists(r.table, r.chain, r.spec...); ok {
				t.Fatalf("legacy rule %v still there", r.spec)
			}
		}
		if rep, err := d.Repair(&Claims{}); err != nil || rep.RulesRestored {
			t.Fatalf("second repair still re-asserts rules: %+v, %v", rep, err)
		}
	})
}

// Two host ports for one container port share the rules that name only the
// container's side: Repair counts them once, as the kernel holds them, so
// a second pass finds nothing to restore.
func TestRepairCountsSharedPortRulesOnce(t *testing.T) {
	inNewNetns(t, func() {
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			t.Fatal(err)
		}
		d := newTestDriver(t)
		nid, eid := strings.Repeat("7", 64), strings.Repeat("8", 64)
		if err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Pool: "10.9.0.0/24", Gateway: "10.9.0.1/24"}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Interface: &api.EndpointInterface{Address: "10.9.0.2/24"}}); err != nil {
			t.Fatal(err)
		}
		if err := d.ProgramExternalConnectivity(&api.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid,
			Options: portmapOptions(t, `[{"Proto":6,"Port":80,"HostPort":18080},{"Proto":6,"Port":80,"HostIP":"127.0.0.1","HostPort":18081}]`)}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if rep, err := d.Repair(nil); err != nil || rep.RulesRestored {
				t.Fatalf("repair %d: %+v, %v; want nothing restored", i, rep, err)
			}
		}
	})
}
