package driver

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	api "github.com/docker/go-plugins-helpers/network"
)

// testID is a valid 64-hex ID, distinct for each kind, i and j.
func testID(kind byte, i, j int) string {
	return fmt.Sprintf("%c%02d%02d", kind, i, j) + strings.Repeat("0", 59)
}

// Requests arrive in parallel (docker rm -f a b c, many docker runs): the
// driver must come out with exactly what was asked, and one bridge name
// must never go to two networks.
func TestConcurrentRequests(t *testing.T) {
	inNewNetns(t, func() {
		d := newTestDriver(t)
		const nets, eps = 6, 4
		var wg sync.WaitGroup
		errs := make(chan error, nets*eps*4)
		for i := 0; i < nets; i++ {
			wg.Add(1)
			go inTestNetns(func() {
				defer wg.Done()
				nid := testID('a', i, 0)
				req := &api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Gateway: fmt.Sprintf("10.%d.0.1/24", 100+i)}}}
				if err := d.CreateNetwork(req); err != nil {
					errs <- err
					return
				}
				var ew sync.WaitGroup
				for j := 0; j < eps; j++ {
					ew.Add(1)
					go inTestNetns(func() {
						defer ew.Done()
						_, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: testID('b', i, j),
							Interface: &api.EndpointInterface{Address: fmt.Sprintf("10.%d.0.%d/24", 100+i, 2+j)}})
						if err == nil {
							_, err = d.Join(&api.JoinRequest{NetworkID: nid, EndpointID: testID('b', i, j)})
						}
						if err != nil {
							errs <- err
						}
					})
				}
				ew.Wait()
			})
		}
		// Meanwhile two networks race for one bridge name.
		var won atomic.Int32
		for k := 0; k < 2; k++ {
			wg.Add(1)
			go inTestNetns(func() {
				defer wg.Done()
				err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: testID('c', k, 0),
					Options:  map[string]interface{}{keyGeneric: map[string]interface{}{optBridgeName: "vxt-same"}},
					IPv4Data: []*api.IPAMData{{Gateway: fmt.Sprintf("10.%d.0.1/24", 200+k)}}})
				if err == nil {
					won.Add(1)
				} else if !strings.Contains(err.Error(), "vxt-same") {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("request failed: %v", err)
		}
		if won.Load() != 1 {
			t.Fatalf("%d networks got bridge vxt-same, want exactly 1", won.Load())
		}
		s, _ := d.State()
		if len(s.Networks) != nets+1 || len(s.Endpoints) != nets*eps {
			t.Fatalf("%d networks and %d endpoints recorded, want %d and %d", len(s.Networks), len(s.Endpoints), nets+1, nets*eps)
		}

		// Tear everything down in parallel, endpoints and networks racing.
		for _, n := range s.Networks {
			wg.Add(1)
			go inTestNetns(func() {
				defer wg.Done()
				if err := d.DeleteNetwork(&api.DeleteNetworkRequest{NetworkID: n.ID}); err != nil {
					t.Errorf("DeleteNetwork: %v", err)
				}
			})
		}
		for _, e := range s.Endpoints {
			wg.Add(1)
			go inTestNetns(func() {
				defer wg.Done()
				if err := d.DeleteEndpoint(&api.DeleteEndpointRequest{NetworkID: e.NetworkID, EndpointID: e.ID}); err != nil {
					t.Errorf("DeleteEndpoint: %v", err)
				}
			})
		}
		wg.Wait()
		if s, _ := d.State(); len(s.Networks)+len(s.Endpoints) != 0 {
			t.Fatalf("records left: %+v", s)
		}
		if rep, err := d.Repair(&Claims{}); err != nil || rep.changed() {
			t.Fatalf("repair after teardown found work: %+v, %v", rep, err)
		}
	})
}

// Repair runs beside requests (the periodic pass lists links and rules
// before it takes the lock): whatever a request has just made, and may not
// have been listed as owned, must never be taken for an orphan.
func TestRepairDuringRequests(t *testing.T) {
	inNewNetns(t, func() {
		d := newTestDriver(t)
		var stop atomic.Bool
		passes := make(chan int)
		go inTestNetns(func() {
			n := 0
			for !stop.Load() {
				rep, err := d.Repair(&Claims{})
				if err != nil || rep.changed() {
					t.Errorf("repair beside requests changed something: %+v, %v", rep, err)
				}
				n++
			}
			passes <- n
		})
		const nets, eps = 8, 4
		var wg sync.WaitGroup
		for i := 0; i < nets; i++ {
			wg.Add(1)
			go inTestNetns(func() {
				defer wg.Done()
				nid := testID('a', i, 0)
				if err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Gateway: fmt.Sprintf("10.%d.0.1/24", 100+i)}}}); err != nil {
					t.Error(err)
					return
				}
				for j := 0; j < eps; j++ {
					eid := testID('b', i, j)
					if _, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
						Interface: &api.EndpointInterface{Address: fmt.Sprintf("10.%d.0.%d/24", 100+i, 2+j)}}); err != nil {
						t.Error(err)
						return
					}
					portmap := []interface{}{map[string]interface{}{"Proto": 6, "Port": 80, "HostPort": 21000 + i*eps + j, "HostPortEnd": 21000 + i*eps + j}}
					if err := d.ProgramExternalConnectivity(&api.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid,
						Options: map[string]interface{}{keyPortMap: portmap}}); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		stop.Store(true)
		t.Logf("%d repairs ran beside the requests", <-passes)
		s, _ := d.State()
		if len(s.Networks) != nets || len(s.Endpoints) != nets*eps {
			t.Fatalf("%d networks and %d endpoints recorded, want %d and %d", len(s.Networks), len(s.Endpoints), nets, nets*eps)
		}
		for _, ep := range s.Endpoints {
			if !linkExists(ep.HostIf) || len(ep.Ports) != 1 {
				t.Errorf("endpoint %s: veth there %v, ports %v", short(ep.ID, 12), linkExists(ep.HostIf), ep.Ports)
			}
		}
		for _, n := range s.Networks {
			if !linkExists(n.Options.Bridge) {
				t.Errorf("bridge %s of network %s deleted", n.Options.Bridge, short(n.ID, 12))
			}
		}
		if rep, err := d.Repair(&Claims{}); err != nil || rep.changed() || rep.PublishedPorts != nets*eps {
			t.Fatalf("repair after the requests: %+v, %v", rep, err)
		}
	})
}
