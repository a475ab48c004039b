package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	api "github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"
)

// failedChecks returns the names of the checks that failed.
func failedChecks(t *testing.T, d *Driver, targets ...string) []Check {
	t.Helper()
	cs, err := d.Doctor(context.Background(), targets)
	if err != nil {
		t.Fatal(err)
	}
	var bad []Check
	for _, c := range cs {
		if !c.OK {
			bad = append(bad, c)
		}
	}
	return bad
}

// mustFailOnly checks that exactly one check fails and that its name
// mentions every word of want, with a fix.
func mustFailOnly(t *testing.T, what string, bad []Check, want ...string) {
	t.Helper()
	if len(bad) != 1 {
		t.Fatalf("%s: %d failed checks, want 1: %+v", what, len(bad), bad)
	}
	for _, w := range want {
		if !strings.Contains(bad[0].Name, w) {
			t.Fatalf("%s: failed check %q does not name %q", what, bad[0].Name, w)
		}
	}
	if !strings.Contains(bad[0].Fix, "fix:") {
		t.Fatalf("%s: no fix in %q", what, bad[0].Fix)
	}
}

func TestDoctorNamesTheBrokenPiece(t *testing.T) {
	inNewNetns(t, func() {
		fwd := filepath.Join(t.TempDir(), "ip_forward")
		os.WriteFile(fwd, []byte("1\n"), 0o644)
		defer func(p string) { ipForwardPath = p }(ipForwardPath)
		ipForwardPath = fwd

		d := newTestDriver(t)
		nid, eid, other := strings.Repeat("d", 64), strings.Repeat("e", 64), strings.Repeat("f", 64)
		if err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Pool: "10.9.0.0/24", Gateway: "10.9.0.1/24"}}}); err != nil {
			t.Fatal(err)
		}
		for i, id := range []string{eid, other} {
			addr := []string{"10.9.0.2/24", "10.9.0.3/24"}[i]
			if _, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: id, Interface: &api.EndpointInterface{Address: addr}}); err != nil {
				t.Fatal(err)
			}
		}
		if bad := failedChecks(t, d); len(bad) != 0 {
			t.Fatalf("healthy: failed %+v", bad)
		}
		if bad := failedChecks(t, d, "10.9.0.2", other); len(bad) != 0 {
			t.Fatalf("healthy, two targets: failed %+v", bad)
		}
		veth, _ := netlink.LinkByName(vethName(eid))

		netlink.LinkSetDown(veth)
		mustFailOnly(t, "veth down", failedChecks(t, d, "10.9.0.2"), vethName(eid), "up")
		// Another endpoint is not the target's concern.
		if bad := failedChecks(t, d, other); len(bad) != 0 {
			t.Fatalf("veth of another endpoint down: failed %+v", bad)
		}
		netlink.LinkSetUp(veth)

		netlink.LinkSetMTU(veth, 1400)
		mustFailOnly(t, "MTU mismatch", failedChecks(t, d), vethName(eid), "MTU 1500")
		netlink.LinkSetMTU(veth, 1500)

		n, err := load[Network](d.store, networkKey(nid))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.fw.remove(networkRules(n)[:1], false); err != nil {
			t.Fatal(err)
		}
		mustFailOnly(t, "ICC rule deleted", failedChecks(t, d), "ICC rules")
		if _, err := d.Repair(nil); err != nil {
			t.Fatal(err)
		}

		os.WriteFile(fwd, []byte("0\n"), 0o644)
		mustFailOnly(t, "ip_forward off", failedChecks(t, d), "ip_forward")
		os.WriteFile(fwd, []byte("1\n"), 0o644)

		if bad := failedChecks(t, d); len(bad) != 0 {
			t.Fatalf("repaired: failed %+v", bad)
		}
		bad := failedChecks(t, d, "10.9.9.9")
		if len(bad) != 1 || !strings.Contains(bad[0].Name, "10.9.9.9") {
			t.Fatalf("unknown target: failed %+v", bad)
		}
	})
}
