package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxbridge/vxbridge/store"
	"github.com/vxbridge/vxbridge/store/consul"
	"github.com/vxbridge/vxbridge/store/consul/consultest"
)

// node returns a member named host on the agent at addr, with its own
// local store (kept across "restarts" when dir is reused).
func node(t *testing.T, addr, host, dir string) *Node {
	t.Helper()
	cs, err := consul.Open(consul.Options{Address: addr, Prefix: consultest.Prefix(t, "vxbridge")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	local, err := store.OpenBolt(filepath.Join(dir, host+".db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { local.Close() })
	vtep := netip.MustParseAddr("192.0.2.1")
	if host == "b" {
		vtep = netip.MustParseAddr("192.0.2.2")
	}
	n, err := New(Config{Store: cs, Local: local, Host: host, VTEP: vtep, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// lab is two members a and b on one agent, a joined; b is left to the test.
type lab struct {
	t     *testing.T
	ctx   context.Context
	agent *consultest.Agent
	dir   string
	a, b  *Node
	aStop context.CancelFunc
}

func newLab(t *testing.T, ctx context.Context) *lab {
	t.Helper()
	agent := consultest.Start(t)
	l := &lab{t: t, ctx: ctx, agent: agent, dir: t.TempDir()}
	l.a, l.b = node(t, agent.Addr, "a", l.dir), node(t, agent.Addr, "b", l.dir)
	var aCtx context.Context
	aCtx, l.aStop = context.WithCancel(ctx)
	if err := l.a.Join(aCtx, nil); err != nil {
		t.Fatal(err)
	}
	return l
}

// restartA stops a as a plugin restart does (its session is closed, not
// destroyed) and starts it again on the same local store, with local as
// the endpoints the driver lists.
func (l *lab) restartA(local []Endpoint) *Node {
	l.t.Helper()
	l.aStop()
	l.a.cfg.Local.Close()
	l.a = node(l.t, l.agent.Addr, "a", l.dir)
	if err := l.a.Join(l.ctx, local); err != nil {
		l.t.Fatal(err)
	}
	return l.a
}

var demo = Overlay{Name: "demo", Subnet4: netip.MustParsePrefix("10.200.0.0/24"), Gateway4: netip.MustParseAddr("10.200.0.1"), MTU: 1450}

func TestDefineIsOncePerClusterAndChecked(t *testing.T) {
	agent := consultest.Start(t)
	dir := t.TempDir()
	a, b := node(t, agent.Addr, "a", dir), node(t, agent.Addr, "b", dir)

	got, err := a.Define(demo)
	if err != nil || got.VNI != FirstVNI || got.Creator != "a" {
		t.Fatalf("first definition: %+v, %v", got, err)
	}
	// Another host's instance gets the same definition.
	if again, err := b.Define(demo); err != nil || again.VNI != got.VNI || again.Creator != "a" {
		t.Fatalf("second host: %+v, %v", again, err)
	}
	other := demo
	other.Subnet4 = netip.MustParsePrefix("10.201.0.0/24")
	if _, err := b.Define(other); err == nil || !strings.Contains(err.Error(), "10.200.0.0/24") {
		t.Fatalf("same name, other subnet: %v", err)
	}
	overlapping := Overlay{Name: "other", Subnet4: netip.MustParsePrefix("10.200.0.0/16")}
	if _, err := b.Define(overlapping); err == nil || !strings.Contains(err.Error(), "overlaps overlay demo") {
		t.Fatalf("overlapping subnet: %v", err)
	}
	taken := Overlay{Name: "third", Subnet4: netip.MustParsePrefix("10.202.0.0/24"), VNI: FirstVNI}
	if _, err := b.Define(taken); err == nil || !strings.Contains(err.Error(), "already used by overlay demo") {
		t.Fatalf("VNI in use: %v", err)
	}
	// Refused definitions leave nothing: the next one gets the next VNI.
	third, err := b.Define(Overlay{Name: "third", Subnet4: netip.MustParsePrefix("10.202.0.0/24")})
	if err != nil || third.VNI != FirstVNI+1 {
		t.Fatalf("third: %+v, %v", third, err)
	}
	all, err := a.Overlays()
	if err != nil || len(all) != 2 {
		t.Fatalf("overlays: %+v, %v", all, err)
	}
}

// VNIs are handed out after the last one given, wrapping: one freed is not
// given again at once (a host may still hold the old overlay's device or
// peers), and hosts claiming at once never get the same one.
func TestVNIsAreNotReusedAtOnce(t *testing.T) {
	agent := consultest.Start(t)
	dir := t.TempDir()
	a, b := node(t, agent.Addr, "a", dir), node(t, agent.Addr, "b", dir)
	overlay := func(i int) Overlay {
		return Overlay{Name: fmt.Sprintf("ov%d", i), Subnet4: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(i), 0}), 24)}
	}
	first, err := a.Define(overlay(0))
	if err != nil || first.VNI != FirstVNI {
		t.Fatalf("first: %+v, %v", first, err)
	}
	if err := a.Undefine("ov0"); err != nil {
		t.Fatal(err)
	}
	next, err := b.Define(overlay(1))
	if err != nil || next.VNI != FirstVNI+1 {
		t.Fatalf("after the first was freed: VNI %d, %v; want %d, not the freed one", next.VNI, err, FirstVNI+1)
	}
	// A VNI taken by number is skipped.
	byNumber := overlay(2)
	byNumber.VNI = FirstVNI + 2
	if _, err := a.Define(byNumber); err != nil {
		t.Fatal(err)
	}
	if o, err := a.Define(overlay(3)); err != nil || o.VNI != FirstVNI+3 {
		t.Fatalf("after one taken by number: VNI %d, %v; want %d", o.VNI, err, FirstVNI+3)
	}
	// At the end of the range it wraps to the first free one.
	if err := a.cfg.Store.Update(vniCursorKey, func([]byte) ([]byte, error) { return []byte(fmt.Sprint(MaxVNI)), nil }); err != nil {
		t.Fatal(err)
	}
	if o, err := b.Define(overlay(4)); err != nil || o.VNI != FirstVNI {
		t.Fatalf("after the wrap: VNI %d, %v; want %d (freed, and the first free)", o.VNI, err, FirstVNI)
	}
	// Two hosts claiming at once: every VNI distinct.
	var wg sync.WaitGroup
	vnis := make(chan uint32, 20)
	for i := 10; i < 30; i++ {
		wg.Add(1)
		go func(n *Node) {
			defer wg.Done()
			o, err := n.Define(overlay(i))
			if err != nil {
				t.Error(err)
				return
			}
			vnis <- o.VNI
		}(map[bool]*Node{true: a, false: b}[i%2 == 0])
	}
	wg.Wait()
	close(vnis)
	seen := map[uint32]bool{FirstVNI: true, FirstVNI + 1: true, FirstVNI + 2: true, FirstVNI + 3: true}
	for v := range vnis {
		if seen[v] {
			t.Errorf("VNI %d handed out twice", v)
		}
		seen[v] = true
	}
}

func TestNextFreeVNI(t *testing.T) {
	taken := map[uint32]bool{FirstVNI: true, FirstVNI + 1: true, 7: true, MaxVNI: true}
	for _, c := range []struct {
		last, want uint32
	}{
		{0, FirstVNI + 2}, {FirstVNI, FirstVNI + 2}, {FirstVNI + 5, FirstVNI + 6}, {MaxVNI - 2, MaxVNI - 1}, {MaxVNI - 1, FirstVNI + 2}, {MaxVNI, FirstVNI + 2},
	} {
		if got, ok := nextFreeVNI(c.last, taken); !ok || got != c.want {
			t.Errorf("after %d: %d %v, want %d", c.last, got, ok, c.want)
		}
	}
}

func TestUndefineRefusedWhileAnotherHostHasContainers(t *testing.T) {
	agent := consultest.Start(t)
	dir := t.TempDir()
	a, b := node(t, agent.Addr, "a", dir), node(t, agent.Addr, "b", dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, n := range []*Node{a, b} {
		if err := n.Join(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	def, err := a.Define(demo)
	if err != nil {
		t.Fatal(err)
	}
	ep := Endpoint{Overlay: "demo", ID: strings.Repeat("b", 64), MAC: "02:42:0a:c8:00:03", IPv4: netip.MustParseAddr("10.200.0.3")}
	if err := b.Advertise(ctx, ep); err != nil {
		t.Fatal(err)
	}
	if err := a.Undefine("demo"); err == nil || !strings.Contains(err.Error(), "host b (1)") {
		t.Fatalf("undefine while b has a container: %v", err)
	}
	if err := b.Withdraw("demo", ep.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.Undefine("demo"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Lookup("demo"); err == nil {
		t.Fatal("definition still there")
	}
	// Its VNI is free again, for whoever asks for it by number.
	byNumber := demo
	byNumber.VNI = def.VNI
	if again, err := a.Define(byNumber); err != nil || again.VNI != def.VNI {
		t.Fatalf("redefined: %+v, %v", again, err)
	}
	if err := a.Undefine("nothing"); err != nil {
		t.Fatalf("undefine of an unknown overlay: %v", err)
	}
}

// Every host sees an endpoint as soon as Advertise returns on its own
// host, and sees it go; a restarted host resumes its session, so its
// endpoints never blink.
func TestWatchAdvertiseWithdrawAndResume(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := newLab(t, ctx)
	a, b := l.a, l.b
	if _, err := a.Define(demo); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []Endpoint
	go b.Watch(ctx, func(_ []Overlay, eps []Endpoint) {
		mu.Lock()
		seen = eps
		mu.Unlock()
	})
	has := func(id string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, ep := range seen {
			if ep.ID == id {
				return true
			}
		}
		return false
	}
	wait := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	id := strings.Repeat("a", 64)
	start := time.Now()
	if err := a.Advertise(ctx, Endpoint{Overlay: "demo", ID: id, MAC: "02:42:0a:c8:00:02", IPv4: netip.MustParseAddr("10.200.0.2")}); err != nil {
		t.Fatal(err)
	}
	wait("the endpoint on b", func() bool { return has(id) })
	t.Logf("advertised → seen on the other host in %v", time.Since(start))
	hosts, err := b.Hosts()
	if err != nil || len(hosts) != 1 || hosts[0].Name != "a" || hosts[0].VTEP != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("hosts: %+v, %v", hosts, err)
	}

	// a "restarts": its session is resumed from its local store, and
	// its endpoint stays advertised throughout.
	a = l.restartA(nil)
	if !has(id) {
		t.Fatal("the endpoint blinked across the restart")
	}
	if err := a.Withdraw("demo", id); err != nil {
		t.Fatal(err)
	}
	wait("the endpoint gone from b", func() bool { return !has(id) })
}

// Without Consul an advertisement fails clearly and nothing is kept.
func TestAdvertiseWithoutClusterFails(t *testing.T) {
	agent := consultest.Start(t)
	a := node(t, agent.Addr, "a", t.TempDir())
	err := a.Advertise(context.Background(), Endpoint{Overlay: "demo", ID: strings.Repeat("c", 64)})
	if err == nil || !strings.Contains(err.Error(), "not in the cluster") {
		t.Fatalf("advertise before joining: %v", err)
	}
	agent.Stop()
	if _, err := a.Define(demo); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("define with Consul stopped: %v", err)
	}
}

// Names learned for an endpoint are advertised with it and survive what
// re-advertises it without them: a restart (the driver's records hold no
// names) and a repeated CreateEndpoint.
func TestNamesOutliveRestartAndRepeat(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := newLab(t, ctx)
	a, b := l.a, l.b
	id := strings.Repeat("d", 64)
	ep := Endpoint{Overlay: "demo", ID: id, MAC: "02:42:0a:c8:00:03", IPv4: netip.MustParseAddr("10.200.0.3")}
	if err := a.Advertise(ctx, ep); err != nil {
		t.Fatal(err)
	}
	if err := a.SetNames(ctx, id, []string{"mysql", "db"}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetNames(ctx, strings.Repeat("e", 64), []string{"ghost"}); err != nil {
		t.Fatalf("names of an endpoint not advertised: %v", err)
	}
	names := func(what string) {
		t.Helper()
		eps, err := b.Endpoints("demo")
		if err != nil || len(eps) != 1 || strings.Join(eps[0].Names, ",") != "mysql,db" {
			t.Fatalf("%s: endpoints %+v, %v; want one named mysql,db", what, eps, err)
		}
	}
	names("advertised")
	if err := a.Advertise(ctx, ep); err != nil {
		t.Fatal(err)
	}
	names("advertised again without names")
	ep.Host, ep.VTEP = "a", a.VTEP() // as the driver lists them
	a = l.restartA([]Endpoint{ep})
	names("after a restart")
	if got := a.LocalEndpoints(); len(got) != 1 || len(got[0].Names) != 2 {
		t.Fatalf("local endpoints after the restart: %+v", got)
	}
}

// A peer host leaving is one warning naming it and forget-host; one
// joining is info; the first view and this host itself are not news.
func TestPeersChangedLogged(t *testing.T) {
	var logs strings.Builder
	n := &Node{cfg: Config{Host: "a"}, log: slog.New(slog.NewTextHandler(&logs, nil))}
	hs := func(names ...string) []Host {
		var out []Host
		for _, name := range names {
			out = append(out, Host{Name: name, VTEP: netip.MustParseAddr("192.0.2.1")})
		}
		return out
	}
	alive := n.peersChanged(nil, hs("a", "b", "c"))
	alive = n.peersChanged(alive, hs("a", "b", "c"))
	if logs.Len() != 0 {
		t.Fatalf("nothing changed, yet: %s", logs.String())
	}
	alive = n.peersChanged(alive, hs("a", "c"))
	alive = n.peersChanged(alive, hs("c"))
	n.peersChanged(alive, hs("b", "c"))
	got := logs.String()
	if strings.Count(got, "level=WARN") != 1 || !strings.Contains(got, "forget-host b") || strings.Count(got, "level=INFO") != 1 ||
		!strings.Contains(got, `msg="peer host joined the cluster" host=b`) || strings.Contains(got, "host=a") {
		t.Fatalf("b gone then back: want one warning naming forget-host b and one info, nothing of this host:\n%s", got)
	}
}

// Registered runs after the first registration and after each one that
// follows a lost session (when an operator may have removed this host).
func TestRegisteredRunsAfterEachRegistration(t *testing.T) {
	agent := consultest.Start(t)
	n := node(t, agent.Addr, "a", t.TempDir())
	runs := make(chan struct{}, 4)
	n.cfg.Registered = func() { runs <- struct{}{} }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := n.Join(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if len(runs) != 1 {
		t.Fatalf("%d runs after Join, want 1", len(runs))
	}
	<-runs
	n.mu.Lock()
	se := n.session
	n.mu.Unlock()
	if err := se.Destroy(ctx); err != nil { // the session is lost
		t.Fatal(err)
	}
	select {
	case <-runs:
	case <-time.After(10 * time.Second):
		t.Fatal("Registered did not run after the session was made again")
	}
}
