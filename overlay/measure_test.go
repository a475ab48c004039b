package overlay

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// TestMeasure reports (never asserts) ping round trips and iperf3
// throughput over the VXLAN overlay and over the bare underlay between two
// namespace hosts. It takes CPU for a few seconds, so it runs only when
// asked: VXBRIDGE_MEASURE=1 go test -run TestMeasure -v ./overlay/
func TestMeasure(t *testing.T) {
	if os.Getenv("VXBRIDGE_MEASURE") == "" {
		t.Skip("set VXBRIDGE_MEASURE=1 to measure")
	}
	h1, h2 := twoHosts(t)
	ctx := context.Background()
	for _, pair := range [][2]*testHost{{h1, h2}, {h2, h1}} {
		if err := pair[0].ov.EnsureDevice(ctx, pair[0].device()); err != nil {
			t.Fatal(err)
		}
		if err := pair[0].ov.Add(ctx, testVNI, pair[1].peer); err != nil {
			t.Fatal(err)
		}
	}
	paths := []struct {
		name     string
		from, to netns.NsHandle
		dst      netip.Addr
	}{
		{"vxlan overlay (container to container)", h1.ctr, h2.ctr, h2.peer.IPv4},
		{"bare veth underlay (host to host)", h1.ns, h2.ns, h2.vtep},
	}
	for _, p := range paths {
		mustPing(t, p.from, p.dst) // resolve first
		var sum, lo time.Duration
		const n = 20
		for range n {
			rtt, err := ping(t, p.from, p.dst, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			sum += rtt
			if lo == 0 || rtt < lo {
				lo = rtt
			}
		}
		t.Logf("%s: ping RTT over %d: min %v, avg %v", p.name, n, lo.Round(time.Microsecond), (sum / n).Round(time.Microsecond))
		if gbps, err := iperf3(t, p.from, p.to, p.dst); err != nil {
			t.Logf("%s: iperf3: %v", p.name, err)
		} else {
			t.Logf("%s: iperf3 TCP, 1 stream, 3 s: %.1f Gbit/s", p.name, gbps)
		}
	}
}

// iperf3 runs a 3-second TCP test from namespace from to a one-off server
// in namespace to, listening on dst.
func iperf3(t *testing.T, from, to netns.NsHandle, dst netip.Addr) (float64, error) {
	t.Helper()
	if _, err := exec.LookPath("iperf3"); err != nil {
		return 0, err
	}
	server := exec.Command("iperf3", "-s", "-1", "-B", dst.String())
	var err error
	inNS(t, to, func() { err = server.Start() })
	if err != nil {
		return 0, err
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	var out []byte
	for range 20 { // until the server listens
		time.Sleep(100 * time.Millisecond)
		inNS(t, from, func() { out, err = exec.Command("iperf3", "-c", dst.String(), "-t", "3", "-J").Output() })
		if err == nil {
			break
		}
	}
	if err != nil {
		return 0, err
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, err
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}
