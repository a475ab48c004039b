//go:build e2e

package tests

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Published ports, outbound NAT and isolation: what Docker's bridge gives,
// on vxbridge networks.

// server starts a container serving HTTP on 80, 9000 and 9001 (body: its
// name) and UDP echo on 53; removed at the end of the test.
func server(t *testing.T, cname string, args ...string) string {
	t.Helper()
	sh := "mkdir -p /www && echo " + cname + " > /www/id && httpd -p 80 -h /www && httpd -p 9000 -h /www && httpd -p 9001 -h /www && exec sleep 3600"
	docker(t, append(append([]string{"create", "--name", cname}, args...), image, "sh", "-c", sh)...)
	t.Cleanup(func() { run("docker", "rm", "-f", cname) })
	docker(t, "cp", udpechoBin, cname+":/udpecho")
	docker(t, "start", cname)
	docker(t, "exec", "-d", cname, "/udpecho", "serve", ":53")
	waitFor(t, "httpd in "+cname, func() bool { return httpGet(inContainer(cname), "127.0.0.1", "80", "/id") == cname })
	return cname
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for i := 0; i < 50; i++ {
		if ok() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func mustGet(t *testing.T, where func(...string) (string, error), from, addr, port, want string) {
	t.Helper()
	if got := httpGet(where, addr, port, "/id"); got != want {
		t.Fatalf("HTTP %s:%s from %s: got %q, want %q", addr, port, from, got, want)
	}
}

func mustNotGet(t *testing.T, where func(...string) (string, error), from, addr, port string) {
	t.Helper()
	if got := httpGet(where, addr, port, "/id"); got != "" {
		t.Fatalf("HTTP %s:%s from %s answered %q, want it unreachable", addr, port, from, got)
	}
}

func udpAsk(where func(...string) (string, error), bin, addr string) string {
	out, err := where(bin, "ask", addr, "ping")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

func TestPublishedPortsEveryKind(t *testing.T) {
	world(t)
	n, id := network(t, "-d", driverName, name(t, "pub"))
	web := server(t, name(t, "web"), "--network", n,
		"-p", "18080:80", "-p", "127.0.0.1:18081:80", "-p", "18053:53/udp", "-p", "19000-19001:9000-9001")
	// Docker's own bridge publishing beside ours keeps working.
	own := server(t, name(t, "own"), "-p", "18095:80")

	mustGet(t, fromWorld, "another machine", hostIP, "18080", web)
	mustGet(t, onHost, "the host", "127.0.0.1", "18080", web)
	mustGet(t, onHost, "the host", hostIP, "18080", web)
	mustGet(t, inContainer(web), "the container itself (hairpin)", hostIP, "18080", web)

	mustGet(t, onHost, "the host", "127.0.0.1", "18081", web)
	mustNotGet(t, fromWorld, "another machine", hostIP, "18081") // bound to 127.0.0.1 only

	mustGet(t, fromWorld, "another machine", hostIP, "19000", web)
	mustGet(t, fromWorld, "another machine", hostIP, "19001", web)

	// UDP, from the world namespace through the host's copy of the tool.
	if got := udpAsk(fromWorld, udpechoBin, hostIP+":18053"); got != "echo:ping" {
		t.Fatalf("UDP 18053 from another machine: got %q", got)
	}
	if got := udpAsk(onHost, udpechoBin, "127.0.0.1:18053"); got != "echo:ping" {
		t.Fatalf("UDP 18053 from the host: got %q", got)
	}

	mustGet(t, fromWorld, "another machine", hostIP, "18095", own)

	// A neighbour through the host's address: DNATed at the gateway, the
	// answers come straight back over the bridge and must still be
	// un-DNATed (they are exempt from the bridge's NOTRACK), TCP and UDP.
	nb := server(t, name(t, "nb"), "--network", n)
	mustGet(t, inContainer(nb), "a neighbour", hostIP, "18080", web)
	if got := udpAsk(inContainer(nb), "/udpecho", hostIP+":18053"); got != "echo:ping" {
		t.Fatalf("UDP %s:18053 from a neighbour: got %q", hostIP, got)
	}
	// Direct traffic between neighbours is not tracked.
	before := notracked(t, id)
	mustGet(t, inContainer(nb), "a neighbour", ipOf(t, web, n).String(), "80", web)
	if after := notracked(t, id); after <= before {
		t.Fatalf("neighbour traffic did not pass the network's NOTRACK rule (packets %d, then %d)", before, after)
	}

	// Users see the mapping with `vxbridge ports`.
	out, err := run(vxbridgeBin, "ports")
	if err != nil {
		t.Fatalf("vxbridge ports: %v %s", err, out)
	}
	for _, want := range []string{"0.0.0.0:18080->80/tcp", "127.0.0.1:18081->80/tcp", "0.0.0.0:18053->53/udp", "0.0.0.0:19000->9000/tcp", "0.0.0.0:19001->9001/tcp"} {
		if !strings.Contains(out, want) {
			t.Fatalf("vxbridge ports lacks %s:\n%s", want, out)
		}
	}
	if !strings.Contains(out, web) {
		t.Fatalf("vxbridge ports does not name container %s:\n%s", web, out)
	}
}

// notracked is the packet count of network id's IPv4 CT --notrack rule.
func notracked(t *testing.T, id string) int {
	t.Helper()
	out := mustRun(t, "iptables", "-t", "raw", "-S", "VXBRIDGE-NOTRACK", "-v")
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if i := slices.Index(f, "-c"); i > 0 && strings.Contains(l, "vxbridge:"+id[:12]) && strings.HasSuffix(l, "--notrack") {
			n, err := strconv.Atoi(f[i+1])
			if err != nil {
				t.Fatalf("counter in %q: %v", l, err)
			}
			return n
		}
	}
	t.Fatalf("no NOTRACK rule for network %s:\n%s", id[:12], out)
	return 0
}

func TestPublishAllChoosesEphemeralPorts(t *testing.T) {
	world(t)
	n, _ := network(t, "-d", driverName, name(t, "puball"))
	web := server(t, name(t, "web"), "--network", n, "--expose", "80", "--expose", "53/udp", "-P")

	out, err := run(vxbridgeBin, "ports")
	if err != nil {
		t.Fatalf("vxbridge ports: %v %s", err, out)
	}
	lo, hi := ephemeralRange(t)
	found := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, web) {
			continue
		}
		for _, f := range strings.Fields(line) {
			host, cport, ok := strings.Cut(strings.TrimSuffix(f, ","), "->")
			if !ok {
				continue
			}
			_, hp, _ := strings.Cut(host, ":")
			p, _ := strconv.Atoi(hp)
			if p < lo || p > hi {
				t.Fatalf("-P chose host port %d, outside the ephemeral range %d-%d", p, lo, hi)
			}
			found[cport] = hp
		}
	}
	if found["80/tcp"] == "" || found["53/udp"] == "" {
		t.Fatalf("vxbridge ports shows %v for %s, want 80/tcp and 53/udp:\n%s", found, web, out)
	}
	mustGet(t, fromWorld, "another machine", hostIP, found["80/tcp"], web)
	if got := udpAsk(fromWorld, udpechoBin, hostIP+":"+found["53/udp"]); got != "echo:ping" {
		t.Fatalf("UDP %s from another machine: got %q", found["53/udp"], got)
	}
}

func ephemeralRange(t *testing.T) (int, int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	var lo, hi int
	fmt.Sscan(string(b), &lo, &hi)
	return lo, hi
}

func TestTakenHostPortFailsClearly(t *testing.T) {
	n, _ := network(t, "-d", driverName, "--ipam-driver", driverName, "--subnet", "10.233.0.0/24", name(t, "taken"))
	first := server(t, name(t, "first"), "--network", n, "-p", "18090:80")
	allocated := len(findPool(t, "10.233.0.0/24").Allocated)

	second := name(t, "second")
	out := dockerFails(t, "run", "-d", "--name", second, "--network", n, "-p", "18090:80", image, "sleep", "60")
	run("docker", "rm", "-f", second)
	t.Logf("error: %s", strings.TrimSpace(out))
	if !strings.Contains(out, "host port 0.0.0.0:18090/tcp is already in use") {
		t.Fatalf("error does not name the port: %s", out)
	}
	if got := len(findPool(t, "10.233.0.0/24").Allocated); got != allocated {
		t.Fatalf("the failed container left its address allocated: %d addresses, want %d", got, allocated)
	}
	if rules := countRules(t, "--dport 18090"); rules != 1 {
		t.Fatalf("%d DNAT rules for 18090, want only the first container's", rules)
	}

	docker(t, "rm", "-f", first)
	if rules := countRules(t, "--dport 18090"); rules != 0 {
		t.Fatalf("%d rules for host port 18090 left after its container went", rules)
	}
	third := server(t, name(t, "third"), "--network", n, "-p", "18090:80")
	mustGet(t, onHost, "the host", "127.0.0.1", "18090", third)
}

// countRules counts NAT rules containing s.
func countRules(t *testing.T, s string) int {
	t.Helper()
	out, err := run("iptables", "-t", "nat", "-S", "VXBRIDGE-DNAT")
	if err != nil {
		t.Fatalf("iptables: %v %s", err, out)
	}
	return strings.Count(out, s+" ")
}

func TestOutboundThroughMasquerade(t *testing.T) {
	world(t)
	open, _ := network(t, "-d", driverName, name(t, "out"))
	internal, _ := network(t, "-d", driverName, "--internal", name(t, "internal"))
	nomasq, _ := network(t, "-d", driverName, "-o", "com.docker.network.bridge.enable_ip_masquerade=false", name(t, "nomasq"))
	a := container(t, "--name", name(t, "out"), "--network", open)
	b := server(t, name(t, "in"), "--network", internal, "-p", "18099:80")
	c := container(t, "--name", name(t, "nm"), "--network", nomasq)

	// The world has no route back to any container subnet: an answer
	// proves the host masqueraded the container's address.
	mustPing(t, a, worldIP)
	mustNotPing(t, b, worldIP)
	mustNotPing(t, c, worldIP)
	// An internal network has no way out and publishes nothing.
	if out := exec_(t, b, "ip", "route"); strings.Contains(out, "default") {
		t.Fatalf("container on an internal network has a default route:\n%s", out)
	}
	mustNotGet(t, fromWorld, "another machine", hostIP, "18099")
	mustNotGet(t, onHost, "the host", "127.0.0.1", "18099")
}

func TestIsolationAndICC(t *testing.T) {
	world(t)
	na, nb, a, b, ab := twoNetworks(t)

	mustNotPing(t, a, ipOf(t, b, nb).String())
	mustNotPing(t, b, ipOf(t, a, na).String())
	mustPing(t, ab, a)
	mustPing(t, ab, b)

	// Docker's own bridge networks (docker0, br-<id>) are isolated from
	// vxbridge's as from each other, both ways; a container on both
	// reaches both.
	dn, _ := network(t, "-d", "bridge", name(t, "docker"))
	d0 := container(t, "--name", name(t, "d0")) // on docker0
	d1 := container(t, "--name", name(t, "d1"), "--network", dn)
	for c, net := range map[string]string{d0: "bridge", d1: dn} {
		mustNotPing(t, c, ipOf(t, a, na).String())
		mustNotPing(t, a, ipOf(t, c, net).String())
	}
	for c, net := range map[string]string{d0: "bridge", d1: dn} {
		// The same containers are reachable from a neighbour on their own
		// network, so the cut-off above is isolation, not a dead container.
		docker(t, "network", "connect", net, ab)
		mustPing(t, ab, ipOf(t, c, net).String())
		docker(t, "network", "disconnect", net, ab) // ab outlives dn
	}
	mustPing(t, ab, a)

	quiet, _ := network(t, "-d", driverName, "-o", "com.docker.network.bridge.enable_icc=false", name(t, "noicc"))
	q1 := container(t, "--name", name(t, "q1"), "--network", quiet)
	q2 := server(t, name(t, "q2"), "--network", quiet, "-p", "18097:80")
	mustNotPing(t, q1, ipOf(t, q2, quiet).String())
	mustNotGet(t, inContainer(q1), "its neighbour", ipOf(t, q2, quiet).String(), "80")
	mustGet(t, fromWorld, "another machine", hostIP, "18097", q2) // published ports still work
	mustPing(t, q1, worldIP)                                      // and the way out
}

func TestRulesComeBackAfterFlushAndRestart(t *testing.T) {
	world(t)
	n, _ := network(t, "-d", driverName, name(t, "flush"))
	web := server(t, name(t, "web"), "--network", n, "-p", "18098:80")
	peer := container(t, "--name", name(t, "peer"), "--network", n)
	mustGet(t, fromWorld, "another machine", hostIP, "18098", web)

	// A firewall reload removes vxbridge's rules…
	for _, c := range [][]string{
		{"iptables", "-F", "VXBRIDGE-FORWARD"},
		{"iptables", "-F", "VXBRIDGE-ISOLATION-1"}, // ICC
		{"iptables", "-t", "nat", "-F", "VXBRIDGE-DNAT"},
		{"iptables", "-t", "nat", "-F", "VXBRIDGE-POSTROUTING"},
		{"iptables", "-t", "raw", "-F", "VXBRIDGE-NOTRACK"},
	} {
		if out, err := run(c...); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
	}
	mustNotGet(t, fromWorld, "another machine", hostIP, "18098")
	mustNotPing(t, peer, web)

	// …and the plugin's restart puts them back.
	restartPlugin(t)
	mustGet(t, fromWorld, "another machine", hostIP, "18098", web)
	mustPing(t, peer, web)
	mustPing(t, peer, worldIP)
	if out := mustRun(t, "iptables", "-t", "raw", "-S", "VXBRIDGE-NOTRACK"); !strings.Contains(out, "--notrack") {
		t.Fatalf("NOTRACK rules not restored:\n%s", out)
	}
}

// pluginPIDs finds the managed plugin's process: the one in this
// network namespace (lab hosts on the same machine run their own).
func pluginPIDs() string {
	out, _ := run("pgrep", "--ns", fmt.Sprint(os.Getpid()), "--nslist", "net", "-f", "^/vxbridge serve")
	return strings.TrimSpace(out)
}

// restartPlugin kills the managed plugin's process; dockerd starts it
// again at once, and the test waits until it answers.
func restartPlugin(t *testing.T) {
	t.Helper()
	pid := pluginPIDs()
	if pid == "" || strings.Contains(pid, "\n") {
		t.Fatalf("want one plugin process in this namespace, found %q", pid)
	}
	mustRun(t, "kill", "-9", pid)
	waitFor(t, "the plugin to come back", func() bool {
		now := pluginPIDs()
		if now == "" || now == pid {
			return false
		}
		_, err := run(vxbridgeBin, "state")
		return err == nil
	})
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(args...)
	if err != nil {
		t.Fatalf("%s: %v %s", strings.Join(args, " "), err, out)
	}
	return out
}

// A published port is public, as with Docker: containers of other
// networks reach it through the host's address (vxbridge and Docker's
// bridge, both ways), while isolation still keeps them from the
// containers' own addresses, and an internal network from everything.
func TestPublishedPortsReachableFromOtherNetworks(t *testing.T) {
	world(t)
	na, _ := network(t, "-d", driverName, name(t, "pa"))
	nb, _ := network(t, "-d", driverName, name(t, "pb"))
	ni, _ := network(t, "-d", driverName, "--internal", "--ipam-driver", driverName,
		"--subnet", "10.238.0.0/24", "--gateway", "10.238.0.1", name(t, "pi"))
	web := server(t, name(t, "web"), "--network", nb, "-p", "18132:80", "-p", "18133:53/udp")
	own := server(t, name(t, "own"), "-p", "18134:80") // on Docker's docker0
	a := server(t, name(t, "a"), "--network", na)      // clients, with /udpecho
	d := server(t, name(t, "d"))                       // on docker0
	i := server(t, name(t, "i"), "--network", ni)

	for c, from := range map[string]string{a: "another vxbridge network", d: "Docker's bridge"} {
		mustGet(t, inContainer(c), from, hostIP, "18132", web)
		if got := udpAsk(inContainer(c), "/udpecho", hostIP+":18133"); got != "echo:ping" {
			t.Fatalf("UDP %s:18133 from %s: got %q", hostIP, from, got)
		}
		mustNotGet(t, inContainer(c), from, ipOf(t, web, nb).String(), "80") // still isolated
	}
	mustGet(t, inContainer(a), "a vxbridge network", hostIP, "18134", own)

	// The internal network's only way to the host is its bridge's address.
	mustNotGet(t, inContainer(i), "an internal network", "10.238.0.1", "18132")
	if got := udpAsk(inContainer(i), "/udpecho", "10.238.0.1:18133"); got != "" {
		t.Fatalf("UDP 10.238.0.1:18133 from an internal network answered %q", got)
	}
}
