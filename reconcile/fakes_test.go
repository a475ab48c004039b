package reconcile_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	netapi "github.com/docker/go-plugins-helpers/network"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/ipam"
	"github.com/vxbridge/vxbridge/reconcile"
	"github.com/vxbridge/vxbridge/store"
)

// ---------------------------------------------------------------------------
// Fake dockerd: the two Engine API calls the reconciler makes, over a unix
// socket, answered from a mutable in-memory view.

// dnet is one network as the fake dockerd holds it.
type dnet struct {
	ID, Name   string
	Options    map[string]string
	Config     []dconfig
	Containers map[string]dcontainer // container ID -> endpoint
	// EndpointCnt is dockerd's own count, which refuses a removal while
	// not zero; -1: the number of Containers.
	EndpointCnt int
}

type dconfig struct {
	Subnet, Gateway string
	Aux             map[string]string
}

type dcontainer struct {
	Name, EndpointID, IPv4, IPv6 string
}

type fakeDockerd struct {
	t      *testing.T
	socket string

	mu            sync.Mutex
	srv           *http.Server
	nets          []*dnet
	status        int             // when non-zero, every request answers it
	inspectStatus map[string]int  // per network ID, for inspect only
	vanished      map[string]bool // listed, but 404 on inspect (deleted in between)
	badJSON       bool
	requests      []string
}

// newDockerd returns a fake dockerd that is not listening yet: its socket
// does not exist until start.
func newDockerd(t *testing.T) *fakeDockerd {
	t.Helper()
	dir := t.TempDir()
	if len(dir) > 90 { // sun_path is 108 bytes
		var err error
		if dir, err = os.MkdirTemp("", "vxd"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	f := &fakeDockerd{
		t:             t,
		socket:        filepath.Join(dir, "docker.sock"),
		inspectStatus: map[string]int{},
		vanished:      map[string]bool{},
	}
	t.Cleanup(f.stop)
	return f
}

// startDockerd returns a listening fake dockerd holding nets.
func startDockerd(t *testing.T, nets ...*dnet) *fakeDockerd {
	t.Helper()
	f := newDockerd(t)
	f.set(nets...)
	f.start()
	return f
}

func (f *fakeDockerd) start() {
	f.t.Helper()
	l, err := net.Listen("unix", f.socket)
	if err != nil {
		f.t.Fatalf("listen on %s: %v", f.socket, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /networks", f.list)
	mux.HandleFunc("GET /networks/{id}", f.inspect)
	mux.HandleFunc("DELETE /networks/{id}", f.remove)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	f.mu.Lock()
	f.srv = srv
	f.mu.Unlock()
	go srv.Serve(l)
}

// stop shuts the server down; its socket file goes with the listener.
func (f *fakeDockerd) stop() {
	f.mu.Lock()
	srv := f.srv
	f.srv = nil
	f.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
	os.Remove(f.socket)
}

func (f *fakeDockerd) client() *reconcile.Docker { return reconcile.NewDocker(f.socket) }

func (f *fakeDockerd) set(nets ...*dnet) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nets = nets
}

func (f *fakeDockerd) addNetwork(n *dnet) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nets = append(f.nets, n)
}

func (f *fakeDockerd) network(id string) *dnet {
	for _, n := range f.nets {
		if n.ID == id {
			return n
		}
	}
	f.t.Fatalf("fake dockerd has no network %s", id)
	return nil
}

func (f *fakeDockerd) addContainer(netID, cid string, c dcontainer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.network(netID)
	if n.Containers == nil {
		n.Containers = map[string]dcontainer{}
	}
	n.Containers[cid] = c
}

func (f *fakeDockerd) removeContainer(netID, cid string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.network(netID).Containers, cid)
}

// fail makes every request answer code (0 = answer normally again).
func (f *fakeDockerd) fail(code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = code
}

func (f *fakeDockerd) failInspect(id string, code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if code == 0 {
		delete(f.inspectStatus, id)
	} else {
		f.inspectStatus[id] = code
	}
}

func (f *fakeDockerd) vanish(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vanished[id] = true
}

func (f *fakeDockerd) setBadJSON(b bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.badJSON = b
}

func (f *fakeDockerd) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// render builds the JSON object dockerd would send, field names as in the
// Engine API; the list leaves Containers empty like dockerd does.
func render(n *dnet, withContainers bool) map[string]any {
	cfg := []map[string]any{}
	for _, c := range n.Config {
		m := map[string]any{"Subnet": c.Subnet}
		if c.Gateway != "" {
			m["Gateway"] = c.Gateway
		}
		if c.Aux != nil {
			m["AuxiliaryAddresses"] = c.Aux
		}
		cfg = append(cfg, m)
	}
	ctrs := map[string]any{}
	if withContainers {
		for id, c := range n.Containers {
			ctrs[id] = map[string]any{
				"Name":        c.Name,
				"EndpointID":  c.EndpointID,
				"MacAddress":  "02:42:ac:11:00:02",
				"IPv4Address": c.IPv4,
				"IPv6Address": c.IPv6,
			}
		}
	}
	return map[string]any{
		"Name":       n.Name,
		"Id":         n.ID,
		"Scope":      "local",
		"Driver":     "vxbridge",
		"EnableIPv6": false,
		"IPAM":       map[string]any{"Driver": "vxbridge", "Options": map[string]string{}, "Config": cfg},
		"Internal":   false,
		"Containers": ctrs,
		"Options":    n.Options,
		"Labels":     map[string]string{},
	}
}

func (f *fakeDockerd) reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if f.badJSON {
		io.WriteString(w, `{"message": not json`)
		return
	}
	json.NewEncoder(w).Encode(v)
}

func (f *fakeDockerd) list(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	if f.status != 0 {
		http.Error(w, `{"message":"boom"}`, f.status)
		return
	}
	out := []map[string]any{}
	for _, n := range f.nets {
		out = append(out, render(n, false))
	}
	f.reply(w, out)
}

func (f *fakeDockerd) inspect(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := r.PathValue("id")
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	if f.status != 0 {
		http.Error(w, `{"message":"boom"}`, f.status)
		return
	}
	if code := f.inspectStatus[id]; code != 0 {
		http.Error(w, `{"message":"boom"}`, code)
		return
	}
	if !f.vanished[id] {
		for _, n := range f.nets {
			if n.ID == id {
				f.reply(w, render(n, true))
				return
			}
		}
	}
	http.Error(w, `{"message":"network `+id+` not found"}`, http.StatusNotFound)
}

// remove deletes a network unless its endpoint count is not zero, which
// dockerd answers as 20.10 does.
func (f *fakeDockerd) remove(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := r.PathValue("id")
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	for i, n := range f.nets {
		if n.ID != id {
			continue
		}
		if cnt := n.EndpointCnt; cnt > 0 || cnt < 0 && len(n.Containers) > 0 {
			http.Error(w, `{"message":"error while removing network: network `+n.Name+` id `+id+` has active endpoints"}`, http.StatusForbidden)
			return
		}
		f.nets = slices.Delete(f.nets, i, i+1)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	http.Error(w, `{"message":"network `+id+` not found"}`, http.StatusNotFound)
}

// ---------------------------------------------------------------------------
// Fake driver: records, and the deletes asked of it.

type fakeDriver struct {
	mu          sync.Mutex
	nets        []*driver.Network
	eps         []*driver.Endpoint
	deletedNets []string
	deletedEps  []string // "network/endpoint"
	repairs     int
	failDeletes error
	claims      *driver.Claims
	adopted     []string
}

func (d *fakeDriver) addNetwork(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nets = append(d.nets, &driver.Network{ID: id})
}

func (d *fakeDriver) addEndpoint(netID, id, addr string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep := &driver.Endpoint{ID: id, NetworkID: netID, HostIf: "vxh" + id}
	if addr != "" {
		ep.Addr4 = netip.MustParsePrefix(addr)
	}
	d.eps = append(d.eps, ep)
}

func (d *fakeDriver) Repair(claims *driver.Claims) (driver.Repairs, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.repairs++
	d.claims = claims
	return driver.Repairs{}, nil
}

func (d *fakeDriver) AdoptNetwork(info driver.NetworkInfo) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range d.nets {
		if n.ID == info.ID {
			return false, nil
		}
	}
	n := &driver.Network{ID: info.ID}
	if info.Gateway4.IsValid() {
		n.Gateway4 = netip.PrefixFrom(info.Gateway4, info.Subnet4.Bits())
	} else if info.Subnet4.IsValid() {
		n.Gateway4 = netip.PrefixFrom(info.Subnet4.Addr().Next(), info.Subnet4.Bits())
	}
	d.nets = append(d.nets, n)
	d.adopted = append(d.adopted, info.ID)
	return true, nil
}

func (d *fakeDriver) AdoptEndpoint(nid, eid, mac string, addr4, addr6 netip.Prefix) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.eps = append(d.eps, &driver.Endpoint{ID: eid, NetworkID: nid, MAC: mac, Addr4: addr4, Addr6: addr6})
	d.adopted = append(d.adopted, nid+"/"+eid)
	return true, nil
}

func (d *fakeDriver) State() (driver.State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return driver.State{Networks: slices.Clone(d.nets), Endpoints: slices.Clone(d.eps)}, nil
}

// DeleteNetwork drops the network and its endpoints, like the real driver.
func (d *fakeDriver) DeleteNetwork(req *netapi.DeleteNetworkRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failDeletes != nil {
		return d.failDeletes
	}
	d.deletedNets = append(d.deletedNets, req.NetworkID)
	d.nets = slices.DeleteFunc(d.nets, func(n *driver.Network) bool { return n.ID == req.NetworkID })
	d.eps = slices.DeleteFunc(d.eps, func(e *driver.Endpoint) bool { return e.NetworkID == req.NetworkID })
	return nil
}

func (d *fakeDriver) DeleteEndpoint(req *netapi.DeleteEndpointRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failDeletes != nil {
		return d.failDeletes
	}
	d.deletedEps = append(d.deletedEps, req.NetworkID+"/"+req.EndpointID)
	d.eps = slices.DeleteFunc(d.eps, func(e *driver.Endpoint) bool {
		return e.NetworkID == req.NetworkID && e.ID == req.EndpointID
	})
	return nil
}

func (d *fakeDriver) setFailDeletes(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failDeletes = err
}

// calls returns the deletes asked so far.
func (d *fakeDriver) calls() (nets, eps []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.deletedNets), slices.Clone(d.deletedEps)
}

func (d *fakeDriver) repairCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.repairs
}

func (d *fakeDriver) networkIDs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, n := range d.nets {
		out = append(out, n.ID)
	}
	return out
}

func (d *fakeDriver) endpointIDs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, e := range d.eps {
		out = append(out, e.NetworkID+"/"+e.ID)
	}
	return out
}

// ---------------------------------------------------------------------------
// The real allocator, on bbolt in t.TempDir().

func newAllocator(t *testing.T) *ipam.Allocator {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a, err := ipam.New(ipam.Config{Spaces: map[string]store.Store{ipam.LocalSpace: st, ipam.GlobalSpace: st}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func requestPoolIn(t *testing.T, a *ipam.Allocator, space, cidr string) string {
	t.Helper()
	res, err := a.RequestPool(&ipamapi.RequestPoolRequest{
		AddressSpace: space,
		Pool:         cidr,
		V6:           netip.MustParsePrefix(cidr).Addr().Is6(),
	})
	if err != nil {
		t.Fatalf("RequestPool(%s): %v", cidr, err)
	}
	return res.PoolID
}

func requestPool(t *testing.T, a *ipam.Allocator, cidr string) string {
	t.Helper()
	return requestPoolIn(t, a, ipam.LocalSpace, cidr)
}

// requestGateway asks for the gateway as dockerd does; returns the bare address.
func requestGateway(t *testing.T, a *ipam.Allocator, poolID string) string {
	t.Helper()
	res, err := a.RequestAddress(&ipamapi.RequestAddressRequest{
		PoolID:  poolID,
		Options: map[string]string{"RequestAddressType": "com.docker.network.gateway"},
	})
	if err != nil {
		t.Fatalf("RequestAddress(gateway of %s): %v", poolID, err)
	}
	return bare(t, res.Address)
}

// requestAddress asks for addr ("" = the next free one); returns the bare address.
func requestAddress(t *testing.T, a *ipam.Allocator, poolID, addr string) string {
	t.Helper()
	res, err := a.RequestAddress(&ipamapi.RequestAddressRequest{PoolID: poolID, Address: addr})
	if err != nil {
		t.Fatalf("RequestAddress(%s, %q): %v", poolID, addr, err)
	}
	return bare(t, res.Address)
}

func bare(t *testing.T, cidr string) string {
	t.Helper()
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		t.Fatalf("allocator answered %q: %v", cidr, err)
	}
	return p.Addr().String()
}

// allocations maps every pool ID to its allocated addresses.
func allocations(t *testing.T, a *ipam.Allocator) map[string][]string {
	t.Helper()
	pools, err := a.Pools()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, p := range pools {
		addrs := []string{}
		for _, x := range p.Allocated {
			addrs = append(addrs, x.String())
		}
		out[p.ID()] = addrs
	}
	return out
}

// ---------------------------------------------------------------------------
// Wiring.

type world struct {
	dockerd *fakeDockerd
	drv     *fakeDriver
	alloc   *ipam.Allocator
	rec     *reconcile.Reconciler
}

func newWorld(t *testing.T, d *fakeDockerd) *world {
	t.Helper()
	w := &world{dockerd: d, drv: &fakeDriver{}, alloc: newAllocator(t)}
	w.rec = reconcile.New(w.drv, w.alloc, d.client(), "", testLogger(t))
	return w
}

// testLogger sends the reconciler's log to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (w *world) pass(t *testing.T, grace time.Duration) reconcile.Report {
	t.Helper()
	return w.rec.Pass(context.Background(), grace)
}

func wantReport(t *testing.T, step string, got, want reconcile.Report) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s: report = %+v, want %+v", step, got, want)
	}
}

func wantStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

func wantAllocations(t *testing.T, step string, a *ipam.Allocator, want map[string][]string) {
	t.Helper()
	got := allocations(t, a)
	if len(got) != len(want) {
		t.Errorf("%s: pools = %v, want %v", step, got, want)
		return
	}
	for id, addrs := range want {
		g, ok := got[id]
		if !ok {
			t.Errorf("%s: pool %s is gone; pools = %v", step, id, got)
			continue
		}
		if !slices.Equal(g, addrs) {
			t.Errorf("%s: pool %s holds %q, want %q", step, id, g, addrs)
		}
	}
}

func wantNoDeletes(t *testing.T, step string, d *fakeDriver) {
	t.Helper()
	nets, eps := d.calls()
	if len(nets)+len(eps) > 0 {
		t.Errorf("%s: DeleteNetwork %q, DeleteEndpoint %q; want none", step, nets, eps)
	}
}

var errDelete = errors.New("driver busy")
