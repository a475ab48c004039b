package reconcile_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vxbridge/vxbridge/reconcile"
)

func twoNetworks() []*dnet {
	return []*dnet{
		{
			ID: "aaa111", Name: "front",
			Config: []dconfig{
				{Subnet: "10.1.0.0/24", Gateway: "10.1.0.1", Aux: map[string]string{"router": "10.1.0.2"}},
				{Subnet: "fd00::/64", Gateway: "fd00::1"},
			},
			Containers: map[string]dcontainer{
				"c1": {Name: "web", EndpointID: "ep1", IPv4: "10.1.0.3/24", IPv6: "fd00::3/64"},
				"c2": {Name: "db", EndpointID: "ep2", IPv4: "10.1.0.4/24"},
			},
		},
		{ID: "bbb222", Name: "back", Config: []dconfig{{Subnet: "10.2.0.0/24"}}},
	}
}

func TestDockerNetworksInspectsEach(t *testing.T) {
	d := startDockerd(t, twoNetworks()...)
	nets, err := d.client().Networks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "requests", d.seen(), []string{"GET /networks", "GET /networks/aaa111", "GET /networks/bbb222"})
	if len(nets) != 2 {
		t.Fatalf("got %d networks: %+v", len(nets), nets)
	}

	n := nets[0]
	if n.ID != "aaa111" || n.Name != "front" {
		t.Errorf("network 0 = %s %s", n.ID, n.Name)
	}
	if len(n.IPAM.Config) != 2 {
		t.Fatalf("IPAM.Config = %+v", n.IPAM.Config)
	}
	c4, c6 := n.IPAM.Config[0], n.IPAM.Config[1]
	if c4.Subnet != "10.1.0.0/24" || c4.Gateway != "10.1.0.1" || c4.AuxiliaryAddresses["router"] != "10.1.0.2" {
		t.Errorf("v4 config = %+v", c4)
	}
	if c6.Subnet != "fd00::/64" || c6.Gateway != "fd00::1" || len(c6.AuxiliaryAddresses) != 0 {
		t.Errorf("v6 config = %+v", c6)
	}
	// Containers only come with inspect: the list leaves them empty.
	if len(n.Containers) != 2 {
		t.Fatalf("Containers = %+v", n.Containers)
	}
	c1 := n.Containers["c1"]
	if c1.Name != "web" || c1.EndpointID != "ep1" || c1.IPv4Address != "10.1.0.3/24" || c1.IPv6Address != "fd00::3/64" {
		t.Errorf("c1 = %+v", c1)
	}
	if c2 := n.Containers["c2"]; c2.EndpointID != "ep2" || c2.IPv4Address != "10.1.0.4/24" || c2.IPv6Address != "" {
		t.Errorf("c2 = %+v", c2)
	}
	if m := nets[1]; m.ID != "bbb222" || m.Name != "back" || len(m.Containers) != 0 || m.IPAM.Config[0].Gateway != "" {
		t.Errorf("network 1 = %+v", m)
	}
}

func TestDockerNetworksEmpty(t *testing.T) {
	d := startDockerd(t)
	nets, err := d.client().Networks(context.Background())
	if err != nil || len(nets) != 0 {
		t.Errorf("Networks = %+v, %v; want none, nil", nets, err)
	}
}

func TestDockerNetworkInspect(t *testing.T) {
	d := startDockerd(t, twoNetworks()...)
	n, err := d.client().Network(context.Background(), "bbb222")
	if err != nil {
		t.Fatal(err)
	}
	if n.ID != "bbb222" || n.Name != "back" || len(n.IPAM.Config) != 1 || n.IPAM.Config[0].Subnet != "10.2.0.0/24" {
		t.Errorf("Network = %+v", n)
	}
	wantStrings(t, "requests", d.seen(), []string{"GET /networks/bbb222"})
}

func TestDockerNetworkNotFound(t *testing.T) {
	d := startDockerd(t, twoNetworks()...)
	_, err := d.client().Network(context.Background(), "nope")
	if !errors.Is(err, reconcile.ErrNotFound) {
		t.Errorf("Network(unknown) err = %v, want ErrNotFound", err)
	}
}

func TestDockerNetworksSkipsVanished(t *testing.T) {
	d := startDockerd(t, twoNetworks()...)
	d.vanish("aaa111") // listed, then removed before it was inspected
	nets, err := d.client().Networks(context.Background())
	if err != nil {
		t.Fatalf("Networks: %v", err)
	}
	if len(nets) != 1 || nets[0].ID != "bbb222" {
		t.Errorf("Networks = %+v, want only bbb222", nets)
	}
	if !slices.Contains(d.seen(), "GET /networks/aaa111") {
		t.Errorf("aaa111 was not inspected: %q", d.seen())
	}
}

func TestDockerErrors(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		setup func(d *fakeDockerd)
		call  func(c *reconcile.Docker) error
	}{
		{"list 500", func(d *fakeDockerd) { d.fail(http.StatusInternalServerError) },
			func(c *reconcile.Docker) error { _, err := c.Networks(ctx); return err }},
		{"list 503", func(d *fakeDockerd) { d.fail(http.StatusServiceUnavailable) },
			func(c *reconcile.Docker) error { _, err := c.Networks(ctx); return err }},
		{"inspect 500 during list", func(d *fakeDockerd) { d.failInspect("bbb222", http.StatusInternalServerError) },
			func(c *reconcile.Docker) error { _, err := c.Networks(ctx); return err }},
		{"inspect 500", func(d *fakeDockerd) { d.failInspect("bbb222", http.StatusInternalServerError) },
			func(c *reconcile.Docker) error { _, err := c.Network(ctx, "bbb222"); return err }},
		{"bad JSON list", func(d *fakeDockerd) { d.setBadJSON(true) },
			func(c *reconcile.Docker) error { _, err := c.Networks(ctx); return err }},
		{"bad JSON inspect", func(d *fakeDockerd) { d.setBadJSON(true) },
			func(c *reconcile.Docker) error { _, err := c.Network(ctx, "aaa111"); return err }},
		{"server stopped", func(d *fakeDockerd) { d.stop() },
			func(c *reconcile.Docker) error { _, err := c.Networks(ctx); return err }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := startDockerd(t, twoNetworks()...)
			c.setup(d)
			err := c.call(d.client())
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, reconcile.ErrNotFound) {
				t.Errorf("err = %v: must not read as ErrNotFound", err)
			}
		})
	}
}

func TestDockerSocketMissing(t *testing.T) {
	c := reconcile.NewDocker(filepath.Join(t.TempDir(), "absent.sock"))
	if _, err := c.Networks(context.Background()); err == nil {
		t.Error("Networks: no error")
	}
	if _, err := c.Network(context.Background(), "x"); err == nil || errors.Is(err, reconcile.ErrNotFound) {
		t.Errorf("Network: err = %v, want a non-ErrNotFound error", err)
	}
}

func TestDockerContextCanceled(t *testing.T) {
	d := startDockerd(t, twoNetworks()...)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.client().Networks(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Networks(canceled) err = %v, want context.Canceled", err)
	}
}
