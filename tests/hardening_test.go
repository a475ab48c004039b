//go:build e2e

package tests

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// The plugin's records can be lost or damaged, and one network can become
// impossible to repair: none of that may take running containers down.

const stateFile = "/var/lib/vxbridge/state.db"

// disabled runs fn with the plugin disabled, and enables it again after.
func disabled(t *testing.T, fn func()) {
	t.Helper()
	disabledThen(t, fn, func() bool { _, err := run(vxbridgeBin, "state"); return err == nil })
}

// disabledThen is disabled, waiting for answered after the enable.
func disabledThen(t *testing.T, fn func(), answered func() bool) {
	t.Helper()
	mustRun(t, "docker", "plugin", "disable", "-f", driverName)
	enabled := false
	t.Cleanup(func() {
		if !enabled {
			run("docker", "plugin", "enable", driverName)
		}
	})
	fn()
	mustRun(t, "docker", "plugin", "enable", driverName)
	enabled = true
	waitFor(t, "the plugin to answer", answered)
}

// A deleted or emptied state file: the plugin rebuilds its records from
// dockerd and the kernel, deletes nothing, and the running containers,
// their published port and new containers all work.
func TestLostStateFileIsRebuilt(t *testing.T) {
	world(t)
	for _, lose := range []struct {
		how string
		do  []string
	}{
		{"deleted", []string{"rm", "-f", stateFile}},
		{"truncated to 0 bytes", []string{"truncate", "-s", "0", stateFile}},
	} {
		t.Run(lose.how, func(t *testing.T) {
			own, _ := network(t, "-d", driverName, "--ipam-driver", driverName, "--subnet", "10.237.0.0/24", name(t, "lost-own"))
			dflt, _ := network(t, "-d", driverName, name(t, "lost-dflt"))
			web := server(t, name(t, "web"), "--network", own, "-p", "18120:80")
			peer := container(t, "--name", name(t, "peer"), "--network", own)
			other := container(t, "--name", name(t, "other"), "--network", dflt)
			mustPing(t, peer, web)
			mustGet(t, fromWorld, "another machine", hostIP, "18120", web)
			before := state(t)

			disabled(t, func() { mustRun(t, lose.do...) })

			mustPing(t, peer, web)
			mustPing(t, web, peer)
			mustGet(t, fromWorld, "another machine", hostIP, "18120", web)
			if !canPing(other, "127.0.0.11") && !canPing(other, ipOf(t, other, dflt).String()) {
				t.Fatalf("%s lost its interface", other)
			}
			after := state(t)
			if len(after.Networks) != len(before.Networks) || len(after.Endpoints) != len(before.Endpoints) {
				t.Fatalf("records after the loss: %d networks, %d endpoints; before: %d, %d",
					len(after.Networks), len(after.Endpoints), len(before.Networks), len(before.Endpoints))
			}
			pool := findPool(t, "10.237.0.0/24")
			for _, c := range []string{web, peer} {
				if ip := ipOf(t, c, own).String(); !strings.Contains(strings.Join(pool.Allocated, " "), ip) {
					t.Fatalf("%s's address %s is not allocated in the rebuilt pool %v", c, ip, pool.Allocated)
				}
			}
			// New containers start on both networks, with fresh addresses.
			late := container(t, "--name", name(t, "late"), "--network", own)
			mustPing(t, late, web)
			late2 := container(t, "--name", name(t, "late2"), "--network", dflt)
			mustPing(t, late2, other)
			if ip := ipOf(t, late, own); ip == ipOf(t, web, own) || ip == ipOf(t, peer, own) {
				t.Fatalf("the rebuilt pool handed out %s twice", ip)
			}
			dups, leaks := books(t, own, "10.237.0.0/24", "10.237.0.1")
			if dups+leaks != 0 {
				t.Fatalf("books after the loss: %d duplicates, %d leaks", dups, leaks)
			}
		})
	}
}

// A damaged state file: the plugin still enables and answers every
// request with an error naming the file and the way out; following it
// (move the file aside, enable again) brings everything back.
func TestDamagedStateFileIsReportedNotFatal(t *testing.T) {
	n, _ := network(t, "-d", driverName, name(t, "damaged"))
	a := container(t, "--name", name(t, "a"), "--network", n)
	b := container(t, "--name", name(t, "b"), "--network", n)

	// Whatever happens, leave a usable state behind for the tests after.
	t.Cleanup(func() {
		if _, err := run(vxbridgeBin, "state"); err != nil {
			run("docker", "plugin", "disable", "-f", driverName)
			os.Remove(stateFile)
			run("docker", "plugin", "enable", driverName)
		}
	})
	disabledThen(t, func() {
		if err := os.WriteFile(stateFile, []byte(strings.Repeat("not a bbolt file ", 4096)), 0o600); err != nil {
			t.Fatal(err)
		}
	}, func() bool {
		// It answers, with the reason.
		out, _ := run(vxbridgeBin, "state")
		return strings.Contains(out, "unreadable")
	})
	out := dockerFails(t, "network", "create", "-d", driverName, name(t, "refused"))
	if !strings.Contains(out, stateFile) || !strings.Contains(out, "mv "+stateFile) {
		t.Fatalf("network create on a damaged state: %s; want the file named with the way out", out)
	}
	mustPing(t, a, b) // the kernel was left alone

	disabled(t, func() { mustRun(t, "mv", stateFile, stateFile+".bad") })
	t.Cleanup(func() { os.Remove(stateFile + ".bad") })
	mustPing(t, a, b)
	c := container(t, "--name", name(t, "c"), "--network", n)
	mustPing(t, c, a)
}

// A network whose bridge name another program took while the plugin was
// down: the plugin starts anyway, repairs every other network, reports the
// broken one (reconcile fails naming it, state shows it), refuses
// containers on it with the reason, and repairs it once the name is free.
func TestBrokenNetworkIsConfined(t *testing.T) {
	world(t)
	bridge := fmt.Sprintf("vxtbr%d", os.Getpid()%100000)
	broken, _ := network(t, "-d", driverName, "-o", "com.docker.network.bridge.name="+bridge, name(t, "broken"))
	good, _ := network(t, "-d", driverName, name(t, "good"))
	web := server(t, name(t, "web"), "--network", good, "-p", "18121:80")

	disabled(t, func() {
		mustRun(t, "ip", "link", "del", bridge)
		mustRun(t, "ip", "link", "add", bridge, "type", "veth", "peer", "name", bridge+"p")
		mustRun(t, "iptables", "-t", "nat", "-F", "VXBRIDGE-DNAT")
	})
	t.Cleanup(func() { run("ip", "link", "del", bridge) })

	mustGet(t, fromWorld, "another machine", hostIP, "18121", web)
	out, err := run(vxbridgeBin, "reconcile")
	if err == nil || !strings.Contains(out, bridge) {
		t.Fatalf("vxbridge reconcile with a broken network: %v\n%s\nwant a failure naming %s", err, out, bridge)
	}
	if out := mustRun(t, vxbridgeBin, "state"); !strings.Contains(out, `"Broken"`) || !strings.Contains(out, bridge) {
		t.Fatalf("vxbridge state does not show the broken network:\n%s", out)
	}
	if out := dockerFails(t, "run", "--rm", "--network", broken, image, "true"); !strings.Contains(out, "broken") {
		t.Fatalf("a container on the broken network: %s", out)
	}

	mustRun(t, "ip", "link", "del", bridge)
	if out, err := run(vxbridgeBin, "reconcile"); err != nil {
		t.Fatalf("vxbridge reconcile once the name is free: %v\n%s", err, out)
	}
	a := container(t, "--name", name(t, "a"), "--network", broken)
	b := container(t, "--name", name(t, "b"), "--network", broken)
	mustPing(t, a, b)
}
