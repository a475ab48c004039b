package names

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"

	"github.com/vxbridge/vxbridge/cluster"
	"github.com/vxbridge/vxbridge/reconcile"
)

type fakeDocker struct {
	networks   map[string]reconcile.Network
	containers map[string]reconcile.Container
	asked      int
}

func (f *fakeDocker) Network(_ context.Context, id string) (reconcile.Network, error) {
	f.asked++
	n, ok := f.networks[id]
	if !ok {
		return n, fmt.Errorf("%s: %w", id, reconcile.ErrNotFound)
	}
	return n, nil
}

func (f *fakeDocker) Container(_ context.Context, id string) (reconcile.Container, error) {
	f.asked++
	c, ok := f.containers[id]
	if !ok {
		return c, fmt.Errorf("%s: %w", id, reconcile.ErrNotFound)
	}
	return c, nil
}

func (f *fakeDocker) Events(ctx context.Context, _ map[string][]string, _ func(), _ func(reconcile.Event)) error {
	<-ctx.Done()
	return ctx.Err()
}

type fakeNode struct{ eps map[string]cluster.Endpoint }

func (f *fakeNode) LocalEndpoints() []cluster.Endpoint {
	var out []cluster.Endpoint
	for _, ep := range f.eps {
		out = append(out, ep)
	}
	return out
}

func (f *fakeNode) SetNames(_ context.Context, id string, names []string) error {
	ep := f.eps[id]
	ep.Names = names
	f.eps[id] = ep
	return nil
}

func container(name, network string, aliases ...string) reconcile.Container {
	var c reconcile.Container
	c.Name = "/" + name
	c.NetworkSettings.Networks = map[string]reconcile.ContainerNetwork{network: {Aliases: aliases}}
	return c
}

func TestLearnerAdvertisesNamesAndAliases(t *testing.T) {
	var n reconcile.Network
	n.Name = "front"
	n.Containers = map[string]reconcile.Attached{"c1": {EndpointID: "ep1"}, "c2": {EndpointID: "ep2"}}
	d := &fakeDocker{
		networks: map[string]reconcile.Network{"n1": n},
		containers: map[string]reconcile.Container{
			"c1": container("mysql", "front", "db", "mysql", "c1short"),
			"c2": container("renamed", "front"),
		},
	}
	node := &fakeNode{eps: map[string]cluster.Endpoint{
		"ep1": {ID: "ep1"},
		"ep2": {ID: "ep2", Names: []string{"old"}},
		"ep3": {ID: "ep3"}, // its container is gone from dockerd
	}}
	l := &Learner{Docker: d, Node: node, Log: slog.New(slog.DiscardHandler),
		Networks: func() (map[string]string, error) {
			return map[string]string{"ep1": "n1", "ep2": "n1", "ep3": "n1"}, nil
		}}
	if err := l.learn(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := node.eps["ep1"].Names; !reflect.DeepEqual(got, []string{"mysql", "db", "c1short"}) {
		t.Errorf("ep1 names %v", got)
	}
	if got := node.eps["ep2"].Names; !reflect.DeepEqual(got, []string{"old"}) {
		t.Errorf("ep2 (named already) names %v; want them untouched", got)
	}
	if node.eps["ep3"].Names != nil {
		t.Errorf("ep3 got names %v", node.eps["ep3"].Names)
	}

	// Once every endpoint with a container is named, a pass asks dockerd
	// only for those still unnamed.
	node.eps = map[string]cluster.Endpoint{"ep1": node.eps["ep1"], "ep2": node.eps["ep2"]}
	d.asked = 0
	l.learn(context.Background())
	if d.asked != 0 {
		t.Errorf("a pass with every name known asked dockerd %d times", d.asked)
	}
	// A rename: every name is learned again.
	l.renamed.Store(true)
	l.learn(context.Background())
	if got := node.eps["ep2"].Names; !reflect.DeepEqual(got, []string{"renamed"}) {
		t.Errorf("ep2 names after a rename %v", got)
	}
}

// Every address of a container on an overlay is an asker of that overlay,
// its address on Docker's bridge too; a pass finds them again only when a
// container moved or the local endpoints changed.
func TestLearnerFindsAskers(t *testing.T) {
	var ov, br, inner reconcile.Network
	ov.Name, br.Name, inner.Name, inner.Internal = "front", "bridge", "inner", true
	ov.Containers = map[string]reconcile.Attached{"c1": {EndpointID: "ep1"}, "c2": {EndpointID: "ep2"}}
	c1 := container("both", "front")
	c1.NetworkSettings.Networks = map[string]reconcile.ContainerNetwork{
		"front":  {NetworkID: "n1", IPAddress: "10.0.1.2", GlobalIPv6Address: "fd00:1::2"},
		"bridge": {NetworkID: "nb", IPAddress: "172.17.0.2"},
	}
	c2 := container("shut", "front")
	c2.NetworkSettings.Networks = map[string]reconcile.ContainerNetwork{
		"front": {NetworkID: "n1", IPAddress: "10.0.1.3"},
		"inner": {NetworkID: "ni", IPAddress: "10.0.2.3"},
	}
	d := &fakeDocker{
		networks:   map[string]reconcile.Network{"n1": ov, "nb": br, "ni": inner},
		containers: map[string]reconcile.Container{"c1": c1, "c2": c2},
	}
	node := &fakeNode{eps: map[string]cluster.Endpoint{"ep1": {ID: "ep1", Names: []string{"both"}}, "ep2": {ID: "ep2", Names: []string{"shut"}}}}
	tb := &Table{}
	l := &Learner{Docker: d, Node: node, Log: slog.New(slog.DiscardHandler), Table: tb,
		Networks: func() (map[string]string, error) { return map[string]string{"ep1": "n1", "ep2": "n1"}, nil }}
	l.moved.Store(true)
	if err := l.learn(context.Background()); err != nil {
		t.Fatal(err)
	}
	front := Asker{Overlays: []string{"front"}, External: true}
	// c2's internal network is not a vxbridge overlay of this host: not an
	// overlay of its, but its address counts.
	want := map[netip.Addr]Asker{
		netip.MustParseAddr("10.0.1.2"): front, netip.MustParseAddr("fd00:1::2"): front,
		netip.MustParseAddr("172.17.0.2"): front,
		netip.MustParseAddr("10.0.1.3"):   front, netip.MustParseAddr("10.0.2.3"): front,
	}
	if !reflect.DeepEqual(tb.askers, want) {
		t.Errorf("askers %v; want %v", tb.askers, want)
	}
	d.asked = 0
	l.learn(context.Background())
	if d.asked != 0 {
		t.Errorf("a pass with nothing moved asked dockerd %d times", d.asked)
	}
	delete(node.eps, "ep2") // c2 left front
	delete(ov.Containers, "c2")
	l.learn(context.Background())
	if _, ok := tb.askers[netip.MustParseAddr("10.0.1.3")]; ok || len(tb.askers) != 3 {
		t.Errorf("askers after ep2 went: %v", tb.askers)
	}
}

// A pass made after an endpoint was created but before dockerd attached
// its container finds no container for it; dockerd's connect event, which
// comes once the container is attached, makes the next pass find it.
func TestLearnerFindsAskerAttachedAfterAPass(t *testing.T) {
	var ov reconcile.Network
	ov.Name = "front"
	ov.Containers = map[string]reconcile.Attached{"c1": {EndpointID: "ep1"}}
	c1 := container("db", "front")
	c1.NetworkSettings.Networks = map[string]reconcile.ContainerNetwork{"front": {NetworkID: "n1", IPAddress: "10.0.1.2"}}
	c2 := container("bridged", "front")
	c2.NetworkSettings.Networks = map[string]reconcile.ContainerNetwork{
		"front":  {NetworkID: "n1", IPAddress: "10.0.1.3"},
		"bridge": {NetworkID: "nb", IPAddress: "172.17.0.3"},
	}
	var br reconcile.Network
	br.Name = "bridge"
	d := &fakeDocker{
		networks:   map[string]reconcile.Network{"n1": ov, "nb": br},
		containers: map[string]reconcile.Container{"c1": c1, "c2": c2},
	}
	node := &fakeNode{eps: map[string]cluster.Endpoint{
		"ep1": {ID: "ep1", Names: []string{"db"}},
		"ep2": {ID: "ep2", Names: []string{"bridged"}}, // created, its container not yet attached
	}}
	tb := &Table{}
	l := &Learner{Docker: d, Node: node, Log: slog.New(slog.DiscardHandler), Table: tb,
		Networks: func() (map[string]string, error) { return map[string]string{"ep1": "n1", "ep2": "n1"}, nil }}
	if err := l.learn(context.Background()); err != nil {
		t.Fatal(err)
	}
	bridged := netip.MustParseAddr("172.17.0.3")
	if _, ok := tb.askers[bridged]; ok {
		t.Fatalf("askers %v hold a container dockerd does not list yet", tb.askers)
	}
	ov.Containers["c2"] = reconcile.Attached{EndpointID: "ep2"}
	var e reconcile.Event
	e.Type, e.Action, e.Actor.ID = "network", "connect", "n1"
	e.Actor.Attributes = map[string]string{"container": "c2"}
	l.notice(e)
	if err := l.learn(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := tb.askers[bridged]; !reflect.DeepEqual(got, Asker{Overlays: []string{"front"}, External: true}) {
		t.Errorf("after the connect event, 172.17.0.3 asks as %+v; askers %v", got, tb.askers)
	}
	// A connect to a network that is no overlay of this host, of a
	// container on none, changes nothing.
	e.Actor.ID, e.Actor.Attributes["container"] = "other", "c9"
	l.notice(e)
	d.asked = 0
	l.learn(context.Background())
	if d.asked != 0 {
		t.Errorf("a connect elsewhere made a pass ask dockerd %d times", d.asked)
	}
}
