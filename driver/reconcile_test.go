package driver

import (
	"net/netip"
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

		rep, err := d.Repair()
		if err != nil {
			t.Fatal(err)
		}
		want := Repairs{Networks: 1, StaleEndpoints: 1, ReattachedVeths: 1, OrphanLinks: 2, OrphanRules: 1 + len(stray), RulesRestored: true}
		if rep != want {
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
		if ok, _ := d.fw.v4.Exists("filter", chainForward, networkRules(&Network{ID: nid, Options: netOptions{Bridge: bridge, ICC: true}})[0].spec...); !ok {
			t.Fatalf("ICC rule not re-asserted")
		}
		s, _ := d.State()
		if len(s.Endpoints) != 1 || s.Endpoints[0].ID != live {
			t.Fatalf("endpoints after repair: %+v", s.Endpoints)
		}
		// A second run finds nothing to do.
		if rep, err := d.Repair(); err != nil || rep.changed() {
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
		rep, err := d.Repair()
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
