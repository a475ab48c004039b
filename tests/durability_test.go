//go:build e2e

package tests

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// Durability: never lose or leak an address, a link or a rule through
// restarts, crashes and races. Each test ends by checking the books: every
// running container has a unique address, every allocated address is held
// by the gateway or a running container, every endpoint record has its
// veth and every vxbridge veth has a record.

// books checks the pool of subnet against the running containers of net
// and returns (duplicates, leaks).
func books(t *testing.T, net, subnet, gateway string) (dups, leaks int) {
	t.Helper()
	ids := strings.Fields(docker(t, "ps", "-q", "--filter", "network="+net))
	holders := map[string][]string{}
	for _, id := range ids {
		holders[ipOf(t, id, net).String()] = append(holders[ipOf(t, id, net).String()], id)
	}
	for ip, hs := range holders {
		if len(hs) > 1 {
			t.Errorf("address %s held by %d containers: %v", ip, len(hs), hs)
			dups += len(hs) - 1
		}
	}
	pool := findPool(t, subnet)
	allocated := map[string]bool{}
	for _, a := range pool.Allocated {
		allocated[a] = true
		if a != gateway && holders[a] == nil {
			t.Errorf("address %s allocated but held by no running container", a)
			leaks++
		}
	}
	if !allocated[gateway] {
		t.Errorf("the gateway %s is no longer allocated", gateway)
	}
	for ip := range holders {
		if !allocated[ip] {
			t.Errorf("running container address %s is not allocated in the pool", ip)
		}
	}
	st := state(t)
	eps := map[string]bool{}
	for _, e := range st.Endpoints {
		eps[e.ID] = true
		if !linkExists(e.HostIf) {
			t.Errorf("endpoint %s has no veth %s", e.ID[:12], e.HostIf)
		}
	}
	for _, id := range ids {
		if ep := endpointID(t, id, net); !eps[ep] {
			t.Errorf("container %s's endpoint %s is not recorded", id, ep[:12])
		}
	}
	assertNoOrphanVeths(t, st)
	return dups, leaks
}

// removeNotRunning removes the test's containers that failed to start.
func removeNotRunning(t *testing.T, prefix string) {
	out := docker(t, "ps", "-aq", "--filter", "name="+prefix, "--filter", "status=created", "--filter", "status=exited")
	if ids := strings.Fields(out); len(ids) > 0 {
		docker(t, append([]string{"rm", "-f"}, ids...)...)
	}
}

func reconcileNow(t *testing.T) string {
	t.Helper()
	return mustRun(t, vxbridgeBin, "reconcile")
}

func TestKillPluginWhileStartingContainers(t *testing.T) {
	const subnet, gateway, runs, kills = "10.234.0.0/24", "10.234.0.1", 30, 4
	n, _ := network(t, "-d", driverName, "--ipam-driver", driverName, "--subnet", subnet, name(t, "kill"))
	prefix := name(t, "k")
	t.Cleanup(func() {
		if ids := strings.Fields(mustRun(t, "docker", "ps", "-aq", "--filter", "name="+prefix)); len(ids) > 0 {
			run(append([]string{"docker", "rm", "-f"}, ids...)...)
		}
	})

	done := make(chan struct{})
	var failed int
	go func() {
		defer close(done)
		for i := 0; i < runs; i++ {
			if _, err := run("docker", "run", "-d", "--name", fmt.Sprintf("%s-%d", prefix, i), "--network", n, image, "sleep", "3600"); err != nil {
				failed++
			}
		}
	}()
	for i := 0; i < kills; i++ {
		time.Sleep(1500 * time.Millisecond)
		restartPlugin(t)
	}
	<-done
	removeNotRunning(t, prefix)
	t.Logf("reconcile: %s", reconcileNow(t))

	dups, leaks := books(t, n, subnet, gateway)
	running := len(strings.Fields(docker(t, "ps", "-q", "--filter", "network="+n)))
	t.Logf("figures: %d docker run, %d plugin kill -9, %d runs failed, %d running, %d duplicate addresses, %d leaked addresses",
		runs, kills, failed, running, dups, leaks)
	if running == 0 {
		t.Fatalf("no container survived the kills")
	}
	// The survivors talk to each other.
	ids := strings.Fields(docker(t, "ps", "-q", "--filter", "network="+n))
	mustPing(t, ids[0], ipOf(t, ids[len(ids)-1], n).String())
}

func TestParallelRunsOnSmallPool(t *testing.T) {
	cases := []struct {
		subnet, gateway string
		runs, fit       int
	}{
		{"10.235.0.0/26", "10.235.0.1", 50, 50}, // 61 free addresses: all fit
		{"10.235.1.0/27", "10.235.1.1", 35, 29}, // 29 free: 6 must fail clearly
	}
	for _, c := range cases {
		t.Run(c.subnet, func(t *testing.T) {
			n, _ := network(t, "-d", driverName, "--ipam-driver", driverName, "--subnet", c.subnet, name(t, "par"))
			prefix := name(t, "p")
			t.Cleanup(func() {
				if ids := strings.Fields(mustRun(t, "docker", "ps", "-aq", "--filter", "name="+prefix)); len(ids) > 0 {
					run(append([]string{"docker", "rm", "-f"}, ids...)...)
				}
			})
			var wg sync.WaitGroup
			var mu sync.Mutex
			var errs []string
			for i := 0; i < c.runs; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					out, err := run("docker", "run", "-d", "--name", fmt.Sprintf("%s-%d", prefix, i), "--network", n, image, "sleep", "3600")
					if err != nil {
						mu.Lock()
						errs = append(errs, strings.TrimSpace(out))
						mu.Unlock()
					}
				}(i)
			}
			wg.Wait()
			removeNotRunning(t, prefix)
			running := len(strings.Fields(docker(t, "ps", "-q", "--filter", "network="+n)))
			if running != c.fit || len(errs) != c.runs-c.fit {
				t.Fatalf("%d running and %d failed, want %d and %d; errors: %v", running, len(errs), c.fit, c.runs-c.fit, errs)
			}
			for _, e := range errs {
				if !strings.Contains(e, "is exhausted") {
					t.Fatalf("a failed run does not say the pool is exhausted: %s", e)
				}
			}
			dups, leaks := books(t, n, c.subnet, c.gateway)
			t.Logf("figures: %d parallel docker run, %d running, %d failed (pool exhausted), %d duplicates, %d leaks", c.runs, running, len(errs), dups, leaks)
		})
	}
}

func TestSimulatedRebootRepairsNetworks(t *testing.T) {
	world(t)
	n, id := network(t, "-d", driverName, name(t, "reboot"))
	web := server(t, name(t, "web"), "--network", n, "-p", "18110:80")
	peer := container(t, "--name", name(t, "peer"), "--network", n)
	mustPing(t, peer, web)

	// The plugin stops; its bridge and rules vanish, as after a reboot.
	mustRun(t, "docker", "plugin", "disable", "-f", driverName)
	enabled := false
	t.Cleanup(func() {
		if !enabled {
			run("docker", "plugin", "enable", driverName)
		}
	})
	mustRun(t, "ip", "link", "del", "vxb-"+id[:11])
	for _, c := range [][]string{{"iptables", "-F", "VXBRIDGE-FORWARD"}, {"iptables", "-t", "nat", "-F", "VXBRIDGE-DNAT"}, {"iptables", "-t", "nat", "-F", "VXBRIDGE-POSTROUTING"}} {
		mustRun(t, c...)
	}
	mustNotPing(t, peer, web)

	// The plugin starts: everything works again, nobody did anything else.
	mustRun(t, "docker", "plugin", "enable", driverName)
	enabled = true
	waitFor(t, "the plugin to answer", func() bool { _, err := run(vxbridgeBin, "state"); return err == nil })
	mustPing(t, peer, web)
	mustGet(t, fromWorld, "another machine", hostIP, "18110", web)
	late := container(t, "--name", name(t, "late"), "--network", n)
	mustPing(t, late, web)
}

func TestDockerdRestartBringsBackContainers(t *testing.T) {
	world(t)
	n, _ := network(t, "-d", driverName, name(t, "restart"))
	web := server(t, name(t, "web"), "--network", n, "--restart=always", "-p", "18111:80")
	peer := container(t, "--name", name(t, "peer"), "--network", n, "--restart=always")
	mustGet(t, fromWorld, "another machine", hostIP, "18111", web)

	restartDockerd(t)
	waitFor(t, "the containers to run again", func() bool {
		out, _ := run("docker", "ps", "-q", "--filter", "name="+web, "--filter", "name="+peer)
		return len(strings.Fields(out)) == 2
	})
	// udpecho and httpd come back with the container's command.
	waitFor(t, "httpd in "+web, func() bool { return httpGet(inContainer(web), "127.0.0.1", "80", "/id") == web })
	mustPing(t, peer, web) // by name, through Docker's DNS
	mustGet(t, fromWorld, "another machine", hostIP, "18111", web)
	if ip := ipOf(t, web, n); !ip.IsValid() {
		t.Fatalf("no address after restart")
	}
}

func waitForLong(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// dockerd forgets teardown calls it cannot deliver: containers removed
// while the plugin is down leave endpoints and addresses behind, which the
// plugin must find and free by itself.
func TestTeardownWhilePluginDown(t *testing.T) {
	const subnet, gateway = "10.236.0.0/24", "10.236.0.1"
	n, _ := network(t, "-d", driverName, "--ipam-driver", driverName, "--subnet", subnet, name(t, "down"))
	keep := container(t, "--name", name(t, "keep"), "--network", n)
	var gone []string
	for i := 0; i < 3; i++ {
		gone = append(gone, container(t, "--name", name(t, fmt.Sprintf("gone%d", i)), "--network", n))
	}

	mustRun(t, "docker", "plugin", "disable", "-f", driverName)
	enabled := false
	t.Cleanup(func() {
		if !enabled {
			run("docker", "plugin", "enable", driverName)
		}
	})
	// dockerd retries each plugin call for ~15 s, warns and goes on: one
	// command, so the containers' teardowns wait in parallel.
	run(append([]string{"docker", "rm", "-f"}, gone...)...)
	mustRun(t, "docker", "plugin", "enable", driverName)
	enabled = true
	waitFor(t, "the plugin to answer", func() bool { _, err := run(vxbridgeBin, "state"); return err == nil })

	before := len(findPool(t, subnet).Allocated)
	out := reconcileNow(t)
	t.Logf("reconcile: %s", out)
	after := len(findPool(t, subnet).Allocated)
	if after != 2 { // the gateway and keep's address
		t.Fatalf("%d addresses allocated after reconcile (%d before), want 2", after, before)
	}
	dups, leaks := books(t, n, subnet, gateway)
	t.Logf("figures: %d containers removed while the plugin was down, %d addresses freed by reconciliation, %d duplicates, %d leaks", len(gone), before-after, dups, leaks)
	mustPing(t, keep, gateway)
	late := container(t, "--name", name(t, "late"), "--network", n)
	mustPing(t, late, keep)
}
