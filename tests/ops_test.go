//go:build e2e

package tests

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The operator's commands on one host: ls, peers, forget-host, and doctor
// naming exactly the piece a test breaks.

// cli runs the vxbridge CLI and returns its output and exit status.
func cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := run(append([]string{vxbridgeBin}, args...)...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out, 0
	case errors.As(err, &ee):
		return out, ee.ExitCode()
	}
	t.Fatalf("vxbridge %s: %v", strings.Join(args, " "), err)
	return "", 0
}

// failed returns doctor's ✘ lines.
func failed(out string) []string {
	var fs []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "✘") {
			fs = append(fs, l)
		}
	}
	return fs
}

// mustDoctor runs doctor and checks it fails exactly one check, whose
// line mentions every word in want, with a fix line after it.
func mustDoctorFail(t *testing.T, what string, args []string, want ...string) {
	t.Helper()
	out, code := cli(t, append([]string{"doctor"}, args...)...)
	fs := failed(out)
	if code != 1 || len(fs) != 1 {
		t.Fatalf("doctor with %s: exit %d, %d failed checks; want exit 1 and exactly one:\n%s", what, code, len(fs), out)
	}
	for _, w := range want {
		if !strings.Contains(fs[0], w) {
			t.Fatalf("doctor with %s: the failed check %q does not name %q:\n%s", what, fs[0], w, out)
		}
	}
	if !strings.Contains(out, fs[0]+"\n    ") || !strings.Contains(out, "fix:") {
		t.Fatalf("doctor with %s: no why/fix line under the failed check:\n%s", what, out)
	}
	t.Logf("doctor with %s:\n%s", what, out)
}

func mustDoctorOK(t *testing.T, args ...string) {
	t.Helper()
	out, code := cli(t, append([]string{"doctor"}, args...)...)
	if code != 0 || len(failed(out)) > 0 || !strings.Contains(out, "checks hold") {
		t.Fatalf("doctor %s on a healthy set-up: exit %d, want 0 and no ✘:\n%s", strings.Join(args, " "), code, out)
	}
}

func TestOperatorCommands(t *testing.T) {
	netA, idA := network(t, "-d", driverName, name(t, "opsa"))
	netB, idB := network(t, "-d", driverName, "--ipam-driver", driverName, "--subnet", "10.239.7.0/24", name(t, "opsb"))
	c1 := container(t, "--name", name(t, "ops1"), "--network", netA, "-p", "127.0.0.1:18089:80")
	c2 := container(t, "--name", name(t, "ops2"), "--network", netA)
	docker(t, "network", "connect", netB, c2)
	mustPing(t, c1, c2)

	t.Run("ls", func(t *testing.T) {
		out, code := cli(t, "ls")
		if code != 0 {
			t.Fatalf("vxbridge ls: exit %d\n%s", code, out)
		}
		for _, w := range []string{"NETWORK ID", netA, netB, idA[:12], "10.239.7.0/24", "10.239.7.1", "local"} {
			if !strings.Contains(out, w) {
				t.Fatalf("vxbridge ls does not show %q:\n%s", w, out)
			}
		}
		t.Logf("vxbridge ls:\n%s", out)
		out, code = cli(t, "ls", "--json")
		var list []struct {
			ID, Name, Bridge, Subnet4, Gateway4 string
			MTU, Endpoints                      int
		}
		if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil {
			t.Fatalf("vxbridge ls --json: exit %d, %v\n%s", code, err, out)
		}
		seen := 0
		for _, n := range list {
			switch n.ID {
			case idA:
				seen++
				if n.Name != netA || n.Endpoints != 2 || n.MTU != 1500 || n.Bridge == "" {
					t.Fatalf("ls --json shows %+v for %s, want its name, 2 endpoints, MTU 1500", n, netA)
				}
			case idB:
				seen++
				if n.Name != netB || n.Endpoints != 1 || n.Subnet4 != "10.239.7.0/24" || n.Gateway4 != "10.239.7.1" {
					t.Fatalf("ls --json shows %+v for %s, want 1 endpoint on 10.239.7.0/24 via 10.239.7.1", n, netB)
				}
			}
		}
		if seen != 2 {
			t.Fatalf("ls --json lacks the test's networks:\n%s", out)
		}
	})

	t.Run("peers and forget-host without a cluster", func(t *testing.T) {
		env := docker(t, "plugin", "inspect", "-f", "{{.Settings.Env}}", driverName)
		if strings.Contains(env, "CONSUL_HTTP_ADDR=") && !strings.Contains(env, "CONSUL_HTTP_ADDR= ") && !strings.Contains(env, "CONSUL_HTTP_ADDR=]") {
			t.Skipf("the plugin has a cluster: %s", env)
		}
		out, code := cli(t, "peers")
		if code != 0 || !strings.Contains(out, "in no cluster") {
			t.Fatalf("vxbridge peers without Consul: exit %d, want 0 and a sentence saying so:\n%s", code, out)
		}
		out, code = cli(t, "forget-host", "gone")
		if code != 1 || !strings.Contains(out, "need Consul") {
			t.Fatalf("vxbridge forget-host without Consul: exit %d, want 1 and the reason:\n%s", code, out)
		}
	})

	t.Run("malformed arguments", func(t *testing.T) {
		for _, args := range [][]string{
			{"ls", "extra"}, {"ls", "--bogus"}, {"peers", "x"}, {"doctor", c1, c2, c1},
			{"doctor", "--nope"}, {"doctor", "not a name!"}, {"doctor", prefix + "no-such-container"},
			{"forget-host"}, {"forget-host", "a", "b"}, {"forget-host", "a/b"},
		} {
			out, code := cli(t, args...)
			if code != 2 || !strings.Contains(out, "vxbridge:") {
				t.Fatalf("vxbridge %s: exit %d, want 2 and a usage error:\n%s", strings.Join(args, " "), code, out)
			}
		}
		// A container on no vxbridge network.
		plain := container(t, "--name", name(t, "opsplain"))
		if out, code := cli(t, "doctor", plain); code != 2 || !strings.Contains(out, "no vxbridge network") {
			t.Fatalf("vxbridge doctor %s: exit %d, want 2:\n%s", plain, code, out)
		}
	})

	t.Run("doctor", func(t *testing.T) {
		mustDoctorOK(t, c1, c2)
		mustDoctorOK(t)
		addr := ipOf(t, c2, netB).String()
		mustDoctorOK(t, c1, addr)

		var veth string
		ep := endpointID(t, c1, netA)
		for _, e := range state(t).Endpoints {
			if e.ID == ep {
				veth = e.HostIf
			}
		}
		if veth == "" {
			t.Fatalf("no record of %s's endpoint %s", c1, ep)
		}

		// A veth set down.
		mustRun(t, "ip", "link", "set", veth, "down")
		mustDoctorFail(t, "a veth down", []string{c1, c2}, veth, "up")
		mustDoctorFail(t, "a veth down (whole host)", nil, veth, "up")
		mustRun(t, "ip", "link", "set", veth, "up")
		mustDoctorOK(t, c1, c2)

		// An MTU mismatch.
		mustRun(t, "ip", "link", "set", veth, "mtu", "1400")
		mustDoctorFail(t, "an MTU mismatch", []string{c1, c2}, veth, "MTU 1500")
		mustRun(t, "ip", "link", "set", veth, "mtu", "1500")
		mustDoctorOK(t, c1, c2)

		// The container's side, inside its namespace: its eth0 down, then
		// the default route that went with it, then its MTU.
		pid := docker(t, "inspect", "-f", "{{.State.Pid}}", c1)
		gw := docker(t, "inspect", "-f", `{{(index .NetworkSettings.Networks "`+netA+`").Gateway}}`, c1)
		inside := func(args ...string) { mustRun(t, append([]string{"nsenter", "-t", pid, "-n"}, args...)...) }
		t.Cleanup(func() {
			run("nsenter", "-t", pid, "-n", "ip", "link", "set", "eth0", "up", "mtu", "1500")
			run("nsenter", "-t", pid, "-n", "ip", "route", "replace", "default", "via", gw, "dev", "eth0")
		})
		inside("ip", "link", "set", "eth0", "down")
		mustDoctorFail(t, "the container's eth0 down", []string{c1, c2}, "container "+c1, "eth0", "up")
		inside("ip", "link", "set", "eth0", "up")
		mustDoctorFail(t, "the container's default route gone with its eth0", []string{c1, c2}, "container "+c1, "default route")
		inside("ip", "route", "add", "default", "via", gw, "dev", "eth0")
		mustDoctorOK(t, c1, c2)
		inside("ip", "link", "set", "eth0", "mtu", "1400")
		mustDoctorFail(t, "an MTU changed inside the container", []string{c1, c2}, "container "+c1, "eth0", "MTU 1500")
		inside("ip", "link", "set", "eth0", "mtu", "1500")
		mustDoctorOK(t, c1, c2)
		mustPing(t, c1, c2)

		// A FORWARD rule deleted: the one that lets the network's
		// containers talk to each other (ICC).
		br := docker(t, "network", "inspect", "-f", "{{.Id}}", netA)[:12]
		var bridge string
		for _, n := range state(t).Networks {
			if n.ID == idA {
				bridge = n.Options.Bridge
			}
		}
		mustRun(t, "iptables", "-D", "VXBRIDGE-ISOLATION-1", "-i", bridge, "-o", bridge, "-m", "comment", "--comment", "vxbridge:"+br, "-j", "ACCEPT")
		mustDoctorFail(t, "a FORWARD rule deleted", []string{c1, c2}, "forwarding, conntrack, isolation and ICC rules")
		if out, code := cli(t, "reconcile"); code != 0 {
			t.Fatalf("vxbridge reconcile: exit %d\n%s", code, out)
		}
		mustPing(t, c1, c2)
		mustDoctorOK(t, c1, c2)

		// ip_forward off (restored whatever happens).
		const ipForward = "/proc/sys/net/ipv4/ip_forward"
		t.Cleanup(func() { os.WriteFile(ipForward, []byte("1\n"), 0o644) })
		if err := os.WriteFile(ipForward, []byte("0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		mustDoctorFail(t, "ip_forward off", []string{c1, c2}, "ip_forward")
		if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		mustDoctorOK(t, c1, c2)

		// --json carries the same verdict and exit status.
		mustRun(t, "ip", "link", "set", veth, "down")
		out, code := cli(t, "doctor", "--json", c1)
		mustRun(t, "ip", "link", "set", veth, "up")
		var a struct {
			Checks []struct {
				Name, Fix string
				OK        bool
			}
		}
		if err := json.Unmarshal([]byte(out), &a); err != nil || code != 1 {
			t.Fatalf("doctor --json with a veth down: exit %d, %v\n%s", code, err, out)
		}
		bad := 0
		for _, c := range a.Checks {
			if !c.OK {
				bad++
				if !strings.Contains(c.Name, veth) || c.Fix == "" {
					t.Fatalf("doctor --json: failed check %+v, want the veth %s with a fix", c, veth)
				}
			}
		}
		if bad != 1 {
			t.Fatalf("doctor --json: %d failed checks, want 1:\n%s", bad, out)
		}
	})
}
