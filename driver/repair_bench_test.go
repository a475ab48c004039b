package driver

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/docker/go-plugins-helpers/network"
)

// BenchmarkCreateEndpointDuringRepair measures how long CreateEndpoint (and
// its DeleteEndpoint) takes while Repair runs back to back on a host with
// 30 networks of 4 endpoints, each with a published port: the periodic
// repair must not stall requests for its link listing and iptables runs.
// Run as root: go test -run '^$' -bench CreateEndpointDuringRepair ./driver/
func BenchmarkCreateEndpointDuringRepair(b *testing.B) {
	inNewNetns(b, func() {
		d := newTestDriver(b)
		const nets, eps = 30, 4
		for i := 0; i < nets; i++ {
			nid := testID('a', i, 0)
			if err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Gateway: fmt.Sprintf("10.%d.0.1/24", 100+i)}}}); err != nil {
				b.Fatal(err)
			}
			for j := 0; j < eps; j++ {
				eid := testID('b', i, j)
				if _, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
					Interface: &api.EndpointInterface{Address: fmt.Sprintf("10.%d.0.%d/24", 100+i, 2+j)}}); err != nil {
					b.Fatal(err)
				}
				portmap := []interface{}{map[string]interface{}{"Proto": 6, "Port": 80, "HostPort": 20000 + i*eps + j, "HostPortEnd": 20000 + i*eps + j}}
				if err := d.ProgramExternalConnectivity(&api.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid,
					Options: map[string]interface{}{keyPortMap: portmap}}); err != nil {
					b.Fatal(err)
				}
			}
		}
		for _, repairing := range []bool{false, true} {
			b.Run(map[bool]string{false: "idle", true: "repairing"}[repairing], func(b *testing.B) {
				// Sub-benchmarks run on goroutines of their own.
				inTestNetns(func() { measureCreateEndpoint(b, d, testID('a', 0, 0), repairing) })
			})
		}
	})
}

// measureCreateEndpoint creates and deletes an endpoint on network nid b.N
// times, with Repair running back to back meanwhile if repairing.
func measureCreateEndpoint(b *testing.B, d *Driver, nid string, repairing bool) {
	var stop atomic.Bool
	repairs := make(chan []time.Duration, 1)
	if repairing {
		go inTestNetns(func() {
			var took []time.Duration
			for !stop.Load() {
				start := time.Now()
				if rep, err := d.Repair(&Claims{}); err != nil || rep.changed() {
					b.Errorf("repair: %+v, %v", rep, err)
				}
				took = append(took, time.Since(start))
			}
			repairs <- took
		})
	} else {
		repairs <- nil
	}
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		eid := fmt.Sprintf("e%05d", i) + strings.Repeat("0", 58)
		start := time.Now()
		if _, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
			Interface: &api.EndpointInterface{Address: "10.100.0.200/24"}}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if err := d.DeleteEndpoint(&api.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // requests arrive, they do not queue
	}
	b.StopTimer()
	stop.Store(true)
	took := <-repairs
	slices.Sort(lat)
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
	if len(took) > 0 {
		b.ReportMetric(ms(took[len(took)/2]), "repair-p50-ms")
	}
}
