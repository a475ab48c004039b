//go:build e2e

package tests

import (
	"encoding/json"
	"strings"
	"testing"
)

// footprint is everything vxbridge can leave behind on the host: bridges,
// veths, rules in its chains, and its recorded state.
func footprint(t *testing.T) string {
	t.Helper()
	links, _ := run("ip", "-o", "link", "show")
	var own []string
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "vx") {
			own = append(own, f[1])
		}
	}
	rules, _ := run("iptables", "-S", "VXBRIDGE-FORWARD")
	st, _ := json.Marshal(state(t))
	return strings.Join(own, " ") + "\n" + rules + "\n" + string(st)
}

func TestBadInputFailsClearlyAndLeavesNothing(t *testing.T) {
	base, _ := network(t, "-d", driverName, "--ipam-driver", driverName, "--subnet", "10.232.0.0/16", name(t, "base"))
	container(t, "--name", name(t, "holder"), "--network", base, "--ip", "10.232.0.5")

	cases := []struct {
		what string
		args []string
		want string
	}{
		{"unknown option", []string{"network", "create", "-d", driverName, "-o", "vxbridge.colour=blue", name(t, "bad")}, `unknown option "vxbridge.colour"`},
		{"bad MTU", []string{"network", "create", "-d", driverName, "-o", "com.docker.network.driver.mtu=12", name(t, "bad")}, `invalid com.docker.network.driver.mtu "12"`},
		{"MTU not a number", []string{"network", "create", "-d", driverName, "-o", "com.docker.network.driver.mtu=big", name(t, "bad")}, `invalid com.docker.network.driver.mtu "big"`},
		{"bad bridge name", []string{"network", "create", "-d", driverName, "-o", "com.docker.network.bridge.name=no/slash", name(t, "bad")}, `invalid com.docker.network.bridge.name`},
		{"bridge name taken", []string{"network", "create", "-d", driverName, "-o", "com.docker.network.bridge.name=docker0", name(t, "bad")}, `bridge docker0`},
		{"bad ICC", []string{"network", "create", "-d", driverName, "-o", "com.docker.network.bridge.enable_icc=maybe", name(t, "bad")}, `invalid com.docker.network.bridge.enable_icc`},
		{"overlapping subnet", []string{"network", "create", "-d", driverName, "--ipam-driver", driverName, "--subnet", "10.232.5.0/24", name(t, "bad")}, "overlaps pool 10.232.0.0/16 already in use"},
		{"subnet over a host route", []string{"network", "create", "-d", driverName, "--ipam-driver", driverName, "--subnet", "172.17.0.0/24", name(t, "bad")}, "172.17.0.0/16"},
		{"subnet too small", []string{"network", "create", "-d", driverName, "--ipam-driver", driverName, "--subnet", "10.239.0.0/31", name(t, "bad")}, "pool 10.239.0.0/31 is too small"},
		{"IPv6 subnet too small", []string{"network", "create", "-d", driverName, "--ipam-driver", driverName, "--ipv6", "--subnet", "fd7a:e2e::1/128", name(t, "bad")}, "IPv6 pool must be /126 or larger"},
		{"unknown IPAM option", []string{"network", "create", "-d", driverName, "--ipam-driver", driverName, "--ipam-opt", "colour=blue", name(t, "bad")}, `"colour"`},
		{"duplicate --ip", []string{"run", "-d", "--name", name(t, "dup"), "--network", base, "--ip", "10.232.0.5", image, "sleep", "60"}, "already allocated"},
		{"--ip outside the subnet", []string{"run", "-d", "--name", name(t, "out"), "--network", base, "--ip", "10.99.0.5", image, "sleep", "60"}, "10.99.0.5"},
	}
	for _, c := range cases {
		t.Run(c.what, func(t *testing.T) {
			before := footprint(t)
			out := dockerFails(t, c.args...)
			t.Logf("error: %s", strings.TrimSpace(out))
			if !strings.Contains(out, c.want) {
				t.Fatalf("error %q does not name the problem (want %q)", strings.TrimSpace(out), c.want)
			}
			if c.args[0] == "run" {
				run("docker", "rm", "-f", c.args[3]) // created, never started
			}
			if after := footprint(t); after != before {
				t.Fatalf("left something behind:\nbefore: %s\nafter:  %s", before, after)
			}
		})
	}
}
