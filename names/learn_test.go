package names

import (
	"context"
	"fmt"
	"log/slog"
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
	n.Containers = map[string]struct {
		Name        string
		EndpointID  string
		MacAddress  string
		IPv4Address string
		IPv6Address string
	}{"c1": {EndpointID: "ep1"}, "c2": {EndpointID: "ep2"}}
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
