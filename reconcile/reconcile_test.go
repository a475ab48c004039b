package reconcile_test

import (
	"context"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/ipam"
	"github.com/vxbridge/vxbridge/reconcile"
)

const hour = time.Hour

// owned is net1, consistent everywhere: pool 10.1.0.0/24 with its gateway,
// an aux address and two containers (endpoints ep1, ep2) in the allocator,
// the driver's records and dockerd's view.
type owned struct {
	pool                  string
	gw, aux, addr1, addr2 string
}

func (o owned) addrs() []string { return []string{o.gw, o.aux, o.addr1, o.addr2} }

func setupOwned(t *testing.T, w *world) owned {
	t.Helper()
	o := owned{pool: requestPool(t, w.alloc, "10.1.0.0/24")}
	o.gw = requestGateway(t, w.alloc, o.pool)
	o.aux = requestAddress(t, w.alloc, o.pool, "10.1.0.2")
	o.addr1 = requestAddress(t, w.alloc, o.pool, "")
	o.addr2 = requestAddress(t, w.alloc, o.pool, "")
	if got := o.addrs(); !slices.Equal(got, []string{"10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"}) {
		t.Fatalf("allocator handed out %q", got)
	}
	w.dockerd.addNetwork(&dnet{
		ID: "net1", Name: "front",
		Config: []dconfig{{Subnet: "10.1.0.0/24", Gateway: o.gw, Aux: map[string]string{"router": o.aux}}},
		Containers: map[string]dcontainer{
			"c1": {Name: "web", EndpointID: "ep1", IPv4: o.addr1 + "/24"},
			"c2": {Name: "db", EndpointID: "ep2", IPv4: o.addr2 + "/24"},
		},
	})
	w.drv.addNetwork("net1")
	w.drv.addEndpoint("net1", "ep1", o.addr1+"/24")
	w.drv.addEndpoint("net1", "ep2", o.addr2+"/24")
	return o
}

// Case 1.
func TestPassKeepsEverythingOwned(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)
	want := map[string][]string{o.pool: o.addrs()}

	for i, grace := range []time.Duration{0, 0, hour} {
		wantReport(t, "pass "+string(rune('1'+i)), w.pass(t, grace), reconcile.Report{})
	}
	wantAllocations(t, "after passes", w.alloc, want)
	wantNoDeletes(t, "after passes", w.drv)
	wantStrings(t, "driver networks", w.drv.networkIDs(), []string{"net1"})
	wantStrings(t, "driver endpoints", w.drv.endpointIDs(), []string{"net1/ep1", "net1/ep2"})
	if n := w.drv.repairCount(); n != 3 {
		t.Errorf("Repair called %d times, want once a pass (3)", n)
	}
}

// Case 2.
func TestLeakedAddressReleasedAfterGrace(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)
	leak := requestAddress(t, w.alloc, o.pool, "") // dockerd lost its release
	if leak != "10.1.0.5" {
		t.Fatalf("leak = %s", leak)
	}

	wantReport(t, "pass 1 (grace 1h)", w.pass(t, hour), reconcile.Report{})
	wantAllocations(t, "pass 1", w.alloc, map[string][]string{o.pool: append(o.addrs(), leak)})

	wantReport(t, "pass 2 (grace 1h)", w.pass(t, hour), reconcile.Report{})
	wantAllocations(t, "pass 2", w.alloc, map[string][]string{o.pool: append(o.addrs(), leak)})

	wantReport(t, "pass 3 (grace 0)", w.pass(t, 0), reconcile.Report{LeakedAddresses: 1})
	wantAllocations(t, "pass 3", w.alloc, map[string][]string{o.pool: o.addrs()})

	wantReport(t, "pass 4", w.pass(t, 0), reconcile.Report{})
	wantAllocations(t, "pass 4", w.alloc, map[string][]string{o.pool: o.addrs()})
	wantNoDeletes(t, "end", w.drv)

	// The released address is free again.
	if got := requestAddress(t, w.alloc, o.pool, leak); got != leak {
		t.Errorf("re-requesting %s gave %s", leak, got)
	}
}

func TestLeakedAddressesCountedEach(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)
	requestAddress(t, w.alloc, o.pool, "10.1.0.7")
	requestAddress(t, w.alloc, o.pool, "10.1.0.200")
	requestAddress(t, w.alloc, o.pool, "10.1.0.254")

	wantReport(t, "pass", w.pass(t, 0), reconcile.Report{LeakedAddresses: 3})
	wantAllocations(t, "after", w.alloc, map[string][]string{o.pool: o.addrs()})
}

func TestNowReleasesLeakInOneCall(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)
	requestAddress(t, w.alloc, o.pool, "10.1.0.9")

	start := time.Now()
	rep := w.rec.Now(context.Background(), 50*time.Millisecond)
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("Now returned after %v, before the grace", took)
	}
	wantReport(t, "Now", rep, reconcile.Report{LeakedAddresses: 1})
	wantAllocations(t, "after Now", w.alloc, map[string][]string{o.pool: o.addrs()})
	if n := w.drv.repairCount(); n != 2 {
		t.Errorf("Repair called %d times, want 2 (one per pass)", n)
	}
}

func TestNowStopsWhenContextEnds(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)
	leak := requestAddress(t, w.alloc, o.pool, "10.1.0.9")

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	rep := w.rec.Now(ctx, hour)
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("Now waited %v despite the context ending", took)
	}
	wantReport(t, "Now", rep, reconcile.Report{})
	wantAllocations(t, "after Now", w.alloc, map[string][]string{o.pool: append(o.addrs(), leak)})
}

// Case 3: objects that are only half way through creation when first seen.
func TestOwnedAgainIsNeverReleased(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)

	// A container joining net1: allocated and recorded, dockerd not yet showing it.
	addr := requestAddress(t, w.alloc, o.pool, "")
	w.drv.addEndpoint("net1", "ep3", addr+"/24")
	// A network being created: pool, gateway, record and one endpoint.
	pool2 := requestPool(t, w.alloc, "10.2.0.0/24")
	gw2 := requestGateway(t, w.alloc, pool2)
	addr2 := requestAddress(t, w.alloc, pool2, "")
	w.drv.addNetwork("net2")
	w.drv.addEndpoint("net2", "ep4", addr2+"/24")
	want := map[string][]string{o.pool: append(o.addrs(), addr), pool2: {gw2, addr2}}

	wantReport(t, "pass 1 (unowned, grace 1h)", w.pass(t, hour), reconcile.Report{})
	wantAllocations(t, "pass 1", w.alloc, want)

	// dockerd finishes: everything is owned now.
	w.dockerd.addContainer("net1", "c3", dcontainer{Name: "new", EndpointID: "ep3", IPv4: addr + "/24"})
	w.dockerd.addNetwork(&dnet{
		ID: "net2", Name: "back",
		Config:     []dconfig{{Subnet: "10.2.0.0/24", Gateway: gw2}},
		Containers: map[string]dcontainer{"c4": {Name: "worker", EndpointID: "ep4", IPv4: addr2 + "/24"}},
	})

	for _, step := range []string{"pass 2 (grace 0)", "pass 3 (grace 0)"} {
		wantReport(t, step, w.pass(t, 0), reconcile.Report{})
		wantAllocations(t, step, w.alloc, want)
	}
	wantNoDeletes(t, "end", w.drv)
	wantStrings(t, "driver networks", w.drv.networkIDs(), []string{"net1", "net2"})
	wantStrings(t, "driver endpoints", w.drv.endpointIDs(), []string{"net1/ep1", "net1/ep2", "net1/ep3", "net2/ep4"})
}

// Case 3: a suspect that becomes owned is forgotten, so a later unowned
// sighting starts the grace afresh. The control run shows the same timeline
// releases when the object stays unowned throughout.
func TestSuspectForgottenWhenOwnedAgain(t *testing.T) {
	const (
		gap   = 300 * time.Millisecond // first sighting -> second sighting
		grace = 250 * time.Millisecond // elapsed since the first, not since the second
	)
	for _, reappears := range []bool{true, false} {
		name := "owned in between"
		if !reappears {
			name = "control: unowned throughout"
		}
		t.Run(name, func(t *testing.T) {
			w := newWorld(t, startDockerd(t))
			o := setupOwned(t, w)
			addr := requestAddress(t, w.alloc, o.pool, "")
			w.drv.addEndpoint("net1", "ep3", addr+"/24")
			withAddr := map[string][]string{o.pool: append(o.addrs(), addr)}

			wantReport(t, "first sighting", w.pass(t, hour), reconcile.Report{})
			time.Sleep(gap)
			if reappears {
				w.dockerd.addContainer("net1", "c3", dcontainer{Name: "x", EndpointID: "ep3", IPv4: addr + "/24"})
				wantReport(t, "owned", w.pass(t, 0), reconcile.Report{})
				w.dockerd.removeContainer("net1", "c3")
			}
			wantReport(t, "second sighting", w.pass(t, hour), reconcile.Report{})

			rep := w.pass(t, grace)
			if reappears {
				wantReport(t, "grace since first sighting only", rep, reconcile.Report{})
				wantAllocations(t, "grace since first sighting only", w.alloc, withAddr)
				wantNoDeletes(t, "grace since first sighting only", w.drv)

				time.Sleep(grace)
				rep = w.pass(t, grace)
			}
			wantReport(t, "grace elapsed", rep, reconcile.Report{ForgottenEndpoints: 1, LeakedAddresses: 1})
			wantAllocations(t, "grace elapsed", w.alloc, map[string][]string{o.pool: o.addrs()})
			nets, eps := w.drv.calls()
			wantStrings(t, "DeleteNetwork calls", nets, nil)
			wantStrings(t, "DeleteEndpoint calls", eps, []string{"net1/ep3"})
		})
	}
}

// Case 4.
func TestLeakedPoolReleasedAfterGrace(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)
	// Pools whose networks dockerd removed while the plugin was down, in
	// both address spaces, with addresses still allocated.
	gone := requestPool(t, w.alloc, "10.9.0.0/24")
	goneGW := requestGateway(t, w.alloc, gone)
	goneAddr := requestAddress(t, w.alloc, gone, "")
	gone2 := requestPoolIn(t, w.alloc, ipam.GlobalSpace, "10.8.0.0/24")
	all := map[string][]string{o.pool: o.addrs(), gone: {goneGW, goneAddr}, gone2: {}}

	wantReport(t, "pass 1 (grace 1h)", w.pass(t, hour), reconcile.Report{})
	wantAllocations(t, "pass 1", w.alloc, all)

	wantReport(t, "pass 2 (grace 0)", w.pass(t, 0), reconcile.Report{LeakedPools: 2})
	wantAllocations(t, "pass 2", w.alloc, map[string][]string{o.pool: o.addrs()})

	wantReport(t, "pass 3", w.pass(t, 0), reconcile.Report{})
	wantAllocations(t, "pass 3", w.alloc, map[string][]string{o.pool: o.addrs()})
	wantNoDeletes(t, "end", w.drv)

	// The subnet is free again.
	requestPool(t, w.alloc, "10.9.0.0/24")
}

func TestPoolMatchedBySubnetIsKept(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	// A network with no container yet: only its subnet ties the pool to it.
	pool := requestPool(t, w.alloc, "10.4.0.0/16")
	gw := requestGateway(t, w.alloc, pool)
	w.dockerd.addNetwork(&dnet{ID: "net4", Name: "empty", Config: []dconfig{{Subnet: "10.4.0.0/16", Gateway: gw}}})
	w.drv.addNetwork("net4")

	for _, step := range []string{"pass 1", "pass 2"} {
		wantReport(t, step, w.pass(t, 0), reconcile.Report{})
		wantAllocations(t, step, w.alloc, map[string][]string{pool: {gw}})
	}
	wantNoDeletes(t, "end", w.drv)
}

// Older dockerd accepted --subnet with host bits set and shows it as given;
// the IPAM stored the masked pool. The pool is still that network's.
func TestPoolMatchedBySubnetWithHostBits(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	pool := requestPool(t, w.alloc, "10.7.0.5/24")
	if pool != "vxlocal/10.7.0.0/24" {
		t.Fatalf("pool ID = %s", pool)
	}
	gw := requestGateway(t, w.alloc, pool)
	w.dockerd.addNetwork(&dnet{ID: "net7", Name: "old", Config: []dconfig{{Subnet: "10.7.0.5/24", Gateway: gw}}})

	wantReport(t, "pass", w.pass(t, 0), reconcile.Report{})
	wantAllocations(t, "after", w.alloc, map[string][]string{pool: {gw}})
}

// Case 5.
func TestForgottenDriverRecordsDeleted(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)
	w.drv.addEndpoint("net1", "epX", "10.1.0.50/24") // container gone from net1
	w.drv.addNetwork("net2")                         // network gone from dockerd
	w.drv.addEndpoint("net2", "epY", "10.2.0.2/24")  // ...with its endpoint

	wantReport(t, "pass 1 (grace 1h)", w.pass(t, hour), reconcile.Report{})
	wantNoDeletes(t, "pass 1", w.drv)

	wantReport(t, "pass 2 (grace 0)", w.pass(t, 0), reconcile.Report{ForgottenNetworks: 1, ForgottenEndpoints: 1})
	nets, eps := w.drv.calls()
	wantStrings(t, "DeleteNetwork calls", nets, []string{"net2"})
	wantStrings(t, "DeleteEndpoint calls (none for net2's endpoint)", eps, []string{"net1/epX"})
	wantStrings(t, "driver networks", w.drv.networkIDs(), []string{"net1"})
	wantStrings(t, "driver endpoints", w.drv.endpointIDs(), []string{"net1/ep1", "net1/ep2"})

	wantReport(t, "pass 3", w.pass(t, 0), reconcile.Report{})
	nets, eps = w.drv.calls()
	if len(nets) != 1 || len(eps) != 1 {
		t.Errorf("pass 3 deleted again: DeleteNetwork %q, DeleteEndpoint %q", nets, eps)
	}
	wantAllocations(t, "end", w.alloc, map[string][]string{o.pool: o.addrs()})
}

func TestFailedDeleteNotCountedAndRetried(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	setupOwned(t, w)
	w.drv.addEndpoint("net1", "epX", "")
	w.drv.addNetwork("net2")
	w.drv.setFailDeletes(errDelete)

	wantReport(t, "failing deletes", w.pass(t, 0), reconcile.Report{})
	w.drv.setFailDeletes(nil)
	wantReport(t, "retry", w.pass(t, 0), reconcile.Report{ForgottenNetworks: 1, ForgottenEndpoints: 1})
	nets, eps := w.drv.calls()
	wantStrings(t, "DeleteNetwork calls", nets, []string{"net2"})
	wantStrings(t, "DeleteEndpoint calls", eps, []string{"net1/epX"})
}

// Case 6: with dockerd's view unavailable nothing is removed, even with
// grace 0; once it answers again, the same leaks go, which shows the
// fixture did hold something to remove.
func TestDockerUnavailableRemovesNothing(t *testing.T) {
	cases := []struct {
		name    string
		start   bool // listening before the first pass
		break_  func(d *fakeDockerd)
		recover func(d *fakeDockerd)
	}{
		{"list answers 500", true,
			func(d *fakeDockerd) { d.fail(http.StatusInternalServerError) },
			func(d *fakeDockerd) { d.fail(0) }},
		{"one inspect answers 500", true,
			func(d *fakeDockerd) { d.failInspect("net1", http.StatusInternalServerError) },
			func(d *fakeDockerd) { d.failInspect("net1", 0) }},
		{"answers garbage", true,
			func(d *fakeDockerd) { d.setBadJSON(true) },
			func(d *fakeDockerd) { d.setBadJSON(false) }},
		{"socket missing", false,
			func(d *fakeDockerd) {},
			func(d *fakeDockerd) { d.start() }},
		{"dockerd stopped", true,
			func(d *fakeDockerd) { d.stop() },
			func(d *fakeDockerd) { d.start() }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := newDockerd(t)
			if c.start {
				d.start()
			}
			w := newWorld(t, d)
			o := setupOwned(t, w)
			leak := requestAddress(t, w.alloc, o.pool, "10.1.0.77")
			gone := requestPool(t, w.alloc, "10.9.0.0/24")
			w.drv.addEndpoint("net1", "epX", "")
			w.drv.addNetwork("net2")
			all := map[string][]string{o.pool: append(o.addrs(), leak), gone: {}}
			if c.name == "socket missing" {
				if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
					t.Fatalf("socket exists: %v", err)
				}
			}

			c.break_(d)
			for _, step := range []string{"pass 1 (grace 0)", "pass 2 (grace 0)"} {
				rep := w.pass(t, 0)
				if rep.Docker == "" {
					t.Errorf("%s: Report.Docker is empty", step)
				}
				rep.Docker = ""
				wantReport(t, step, rep, reconcile.Report{})
				wantAllocations(t, step, w.alloc, all)
				wantNoDeletes(t, step, w.drv)
			}
			if n := w.drv.repairCount(); n != 2 {
				t.Errorf("Repair called %d times, want 2: the kernel is repaired regardless", n)
			}
			rep := w.rec.Now(context.Background(), 0)
			if rep.Docker == "" {
				t.Errorf("Now: Report.Docker is empty")
			}
			wantAllocations(t, "Now", w.alloc, all)
			wantNoDeletes(t, "Now", w.drv)

			c.recover(d)
			wantReport(t, "dockerd back", w.pass(t, 0), reconcile.Report{
				ForgottenNetworks: 1, ForgottenEndpoints: 1, LeakedPools: 1, LeakedAddresses: 1,
			})
			wantAllocations(t, "dockerd back", w.alloc, map[string][]string{o.pool: o.addrs()})
		})
	}
}

// Being unavailable must not reset the grace either: a suspect seen before
// the outage is not re-timed from scratch, and nothing is taken during it.
func TestDockerOutageKeepsSuspects(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)
	leak := requestAddress(t, w.alloc, o.pool, "10.1.0.77")

	wantReport(t, "first sighting", w.pass(t, hour), reconcile.Report{})
	time.Sleep(100 * time.Millisecond)
	w.dockerd.fail(http.StatusInternalServerError)
	if rep := w.pass(t, 0); rep.Docker == "" || rep.LeakedAddresses != 0 {
		t.Errorf("during outage: %+v", rep)
	}
	wantAllocations(t, "during outage", w.alloc, map[string][]string{o.pool: append(o.addrs(), leak)})
	w.dockerd.fail(0)
	wantReport(t, "after outage", w.pass(t, 100*time.Millisecond), reconcile.Report{LeakedAddresses: 1})
}

// Case 7.
func TestIPv6AddressesHeld(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	pool4 := requestPool(t, w.alloc, "10.3.0.0/24")
	gw4 := requestGateway(t, w.alloc, pool4)
	pool6 := requestPool(t, w.alloc, "fd00::/64")
	gw6 := requestGateway(t, w.alloc, pool6)
	if gw6 != "fd00::1" {
		t.Fatalf("v6 gateway = %s", gw6)
	}
	a4 := requestAddress(t, w.alloc, pool4, "")
	a6 := requestAddress(t, w.alloc, pool6, "")
	if a6 != "fd00::2" {
		t.Fatalf("v6 address = %s", a6)
	}
	aux6 := requestAddress(t, w.alloc, pool6, "fd00::ff")
	leak6 := requestAddress(t, w.alloc, pool6, "fd00::3")
	want := map[string][]string{pool4: {gw4, a4}, pool6: {gw6, a6, leak6, aux6}}
	w.dockerd.addNetwork(&dnet{
		ID: "net6", Name: "dual",
		Config: []dconfig{
			{Subnet: "10.3.0.0/24", Gateway: gw4},
			{Subnet: "fd00::/64", Gateway: gw6, Aux: map[string]string{"dns": aux6}},
		},
		Containers: map[string]dcontainer{"c1": {Name: "v6", EndpointID: "ep1", IPv4: a4 + "/24", IPv6: "fd00::2/64"}},
	})
	w.drv.addNetwork("net6")
	w.drv.addEndpoint("net6", "ep1", a4+"/24")

	wantReport(t, "pass 1", w.pass(t, hour), reconcile.Report{})
	wantAllocations(t, "pass 1", w.alloc, want)
	wantReport(t, "pass 2", w.pass(t, 0), reconcile.Report{LeakedAddresses: 1})
	wantAllocations(t, "pass 2", w.alloc, map[string][]string{pool4: {gw4, a4}, pool6: {gw6, a6, aux6}})
	wantReport(t, "pass 3", w.pass(t, 0), reconcile.Report{})
	wantNoDeletes(t, "end", w.drv)
}

// dockerd has printed gateways with a prefix length (older daemons, and
// IPv6 networks before a daemon restart): the address is still held.
func TestGatewayWithPrefixLengthHeld(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	pool4 := requestPool(t, w.alloc, "10.5.0.0/24")
	gw4 := requestGateway(t, w.alloc, pool4)
	pool6 := requestPool(t, w.alloc, "fd05::/64")
	gw6 := requestGateway(t, w.alloc, pool6)
	w.dockerd.addNetwork(&dnet{ID: "net5", Name: "pfx", Config: []dconfig{
		{Subnet: "10.5.0.0/24", Gateway: gw4 + "/24"},
		{Subnet: "fd05::/64", Gateway: gw6 + "/64"},
	}})

	wantReport(t, "pass", w.pass(t, 0), reconcile.Report{})
	wantAllocations(t, "after", w.alloc, map[string][]string{pool4: {gw4}, pool6: {gw6}})
}

// Run: background passes remove a leak without being asked: marked on the
// first tick, released on the second (the grace is shorter than the
// interval), and Run stops with ctx.
func TestRunReleasesInBackground(t *testing.T) {
	const interval = 100 * time.Millisecond
	w := newWorld(t, startDockerd(t))
	o := setupOwned(t, w)
	requestAddress(t, w.alloc, o.pool, "10.1.0.99")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		w.rec.Run(ctx, interval, true)
	}()
	for len(allocations(t, w.alloc)[o.pool]) != len(o.addrs()) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("leak still allocated after 10s: %v", allocations(t, w.alloc))
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after ctx ended")
	}
	if took < 2*interval {
		t.Errorf("leak released after %v: before the second tick", took)
	}
	if took > 8*interval {
		t.Errorf("leak released only after %v: want the second tick (~%v)", took, 2*interval)
	}
	wantAllocations(t, "after Run", w.alloc, map[string][]string{o.pool: o.addrs()})
	wantNoDeletes(t, "after Run", w.drv)
}

// A network created with --subnet and no --gateway shows no Gateway in
// dockerd, although dockerd asked the IPAM for one and the bridge uses it:
// the pool's recorded gateway keeps it held.
func TestGatewayNotShownByDockerdIsKept(t *testing.T) {
	w := newWorld(t, startDockerd(t))
	pool := requestPool(t, w.alloc, "10.6.0.0/24")
	gw := requestGateway(t, w.alloc, pool)
	addr := requestAddress(t, w.alloc, pool, "")
	w.dockerd.addNetwork(&dnet{
		ID: "net7", Name: "subnet-only",
		Config:     []dconfig{{Subnet: "10.6.0.0/24"}}, // as dockerd shows it: no Gateway
		Containers: map[string]dcontainer{"c1": {Name: "a", EndpointID: "ep1", IPv4: addr + "/24"}},
	})
	w.drv.addNetwork("net7")
	w.drv.addEndpoint("net7", "ep1", addr+"/24")

	wantReport(t, "pass 1", w.pass(t, 0), reconcile.Report{})
	wantAllocations(t, "pass 1", w.alloc, map[string][]string{pool: {gw, addr}})
}

// A lost state file: dockerd still has the plugin's network with its
// containers. Start adopts the network, its endpoints and its pool (with
// the gateway and every address dockerd shows) at once, before serving,
// and removes nothing; Repair is told what dockerd claims, so nothing of
// it is pruned either.
func TestStartAdoptsWhatDockerdStillHas(t *testing.T) {
	d := startDockerd(t, &dnet{
		ID: "net1", Name: "front",
		Config: []dconfig{{Subnet: "10.1.0.0/24"}}, // --subnet without --gateway: dockerd shows none
		Containers: map[string]dcontainer{
			"c1": {Name: "web", EndpointID: "ep1", IPv4: "10.1.0.3/24"},
			"c2": {Name: "db", EndpointID: "ep2", IPv4: "10.1.0.4/24"},
		},
	})
	w := &world{dockerd: d, drv: &fakeDriver{}, alloc: newAllocator(t)}
	w.rec = reconcile.New(w.drv, w.alloc, d.client(), "vxbridge", testLogger(t))
	rep, viewed := w.rec.Start(context.Background())
	if !viewed {
		t.Fatalf("Start did not get dockerd's view: %+v", rep)
	}
	wantReport(t, "start", rep, reconcile.Report{AdoptedNetworks: 1, AdoptedEndpoints: 2, AdoptedPools: 1})
	wantStrings(t, "driver networks", w.drv.networkIDs(), []string{"net1"})
	pools := allocations(t, w.alloc)
	wantStrings(t, "adopted pool", pools["vxlocal/10.1.0.0/24"], []string{"10.1.0.1", "10.1.0.3", "10.1.0.4"})
	if c := w.drv.claims; c == nil || !c.Networks["net1"] || c.Endpoints["ep1"] != "net1" || !c.Bridges[driver.BridgeName("net1", nil)] {
		t.Fatalf("Repair's claims = %+v, want net1 and its endpoints", c)
	}
	// The next address handed out is a free one, never a container's.
	if got := requestAddress(t, w.alloc, "vxlocal/10.1.0.0/24", ""); got == "10.1.0.3" || got == "10.1.0.4" || got == "10.1.0.1" {
		t.Fatalf("adopted pool handed out %s again", got)
	}
	// Adoption happens once.
	wantReport(t, "pass after start", w.pass(t, 0), reconcile.Report{LeakedAddresses: 1})
}

// Start without dockerd prunes nothing (Repair gets no claims) and says
// why; networks of other drivers are never adopted.
func TestStartWithoutDockerdPrunesNothing(t *testing.T) {
	d := newDockerd(t) // not listening
	w := &world{dockerd: d, drv: &fakeDriver{}, alloc: newAllocator(t)}
	w.rec = reconcile.New(w.drv, w.alloc, d.client(), "vxbridge", testLogger(t))
	rep, viewed := w.rec.Start(context.Background())
	if viewed || rep.Docker == "" {
		t.Fatalf("Start without dockerd: viewed=%v report %+v", viewed, rep)
	}
	if w.drv.claims != nil || w.drv.repairCount() != 1 {
		t.Fatalf("Repair ran %d times with claims %+v, want once with none", w.drv.repairCount(), w.drv.claims)
	}
	other := newWorld(t, startDockerd(t, &dnet{ID: "net9", Config: []dconfig{{Subnet: "10.9.0.0/24"}}}))
	if rep, _ := other.rec.Start(context.Background()); rep.AdoptedNetworks+rep.AdoptedPools != 0 {
		t.Fatalf("adopted a network of another driver: %+v", rep)
	}
}
