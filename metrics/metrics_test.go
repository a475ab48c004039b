package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/ipam"
)

func TestEndpoint(t *testing.T) {
	pools := []ipam.Pool{{Space: "vxlocal", Prefix: netip.MustParsePrefix("10.1.0.0/24"),
		Allocated: []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")}, Overlay: "demo"}}
	peers := []driver.PeerStatus{{Host: "a", Self: true}, {Host: "b", Complete: true}, {Host: "c"}}
	m := New(Sources{
		Pools: func() ([]ipam.Pool, error) { return pools, nil },
		Peers: func(context.Context) ([]driver.PeerStatus, error) { return peers, nil },
	})
	m.Observe("/NetworkDriver.Join", 3*time.Millisecond, nil)
	m.Observe("/NetworkDriver.Join", time.Millisecond, nil)
	m.Observe("/IpamDriver.RequestAddress", time.Millisecond, errors.New("exhausted"))
	now := time.Now()
	m.Programmed(now.Add(-20*time.Millisecond), now.Add(-time.Millisecond), now)
	m.Programmed(now.Add(time.Second), now.Add(-time.Millisecond), now) // a clock ahead: counts as 0
	m.Programmed(time.Time{}, now.Add(-time.Millisecond), now)          // advertised by an older plugin
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := m.Serve(ctx, "127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	out := string(b)
	for _, want := range []string{
		`vxbridge_requests_total{method="NetworkDriver.Join",outcome="ok"} 2`,
		`vxbridge_requests_total{method="IpamDriver.RequestAddress",outcome="error"} 1`,
		`vxbridge_request_duration_seconds_count{method="NetworkDriver.Join"} 2`,
		`vxbridge_pool_addresses_in_use{overlay="demo",pool="vxlocal/10.1.0.0/24"} 2`,
		`vxbridge_overlay_peers 2`,
		`vxbridge_overlay_peer_entries_complete{host="b"} 1`,
		`vxbridge_overlay_peer_entries_complete{host="c"} 0`,
		"vxbridge_overlay_convergence_seconds_sum 0.02\n",
		"vxbridge_overlay_convergence_seconds_count 2\n",
		"vxbridge_overlay_programming_seconds_count 3\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s:\n%s", want, out)
		}
	}

	// Without a cluster: no peer metrics, the rest as before.
	peersErr := driver.ErrNoCluster
	m = New(Sources{
		Pools: func() ([]ipam.Pool, error) { return pools, nil },
		Peers: func(context.Context) ([]driver.PeerStatus, error) { return nil, peersErr },
	})
	addr, err = m.Serve(ctx, "127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	res, err = http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || strings.Contains(string(b), "vxbridge_overlay_peers") || !strings.Contains(string(b), "vxbridge_pool_addresses_in_use") {
		t.Errorf("metrics without a cluster: %s\n%s", res.Status, b)
	}
}
