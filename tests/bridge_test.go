//go:build e2e

package tests

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The single-host half of Docker's networking tutorial, on vxbridge networks.

func TestNetworkLifecycle(t *testing.T) {
	n, id := network(t, "-d", driverName, name(t, "my-bridge"))

	if got := docker(t, "network", "ls", "--filter", "id="+id, "--format", "{{.Name}} {{.Driver}}"); got != n+" "+driverName {
		t.Fatalf("network ls: got %q, want %q", got, n+" "+driverName)
	}
	if got := docker(t, "network", "inspect", "-f", "{{.Driver}} {{.Scope}}", n); got != driverName+" local" {
		t.Fatalf("network inspect: got %q", got)
	}
	bridge := "vxb-" + id[:11]
	out, err := run("ip", "-o", "link", "show", bridge)
	if err != nil || !strings.Contains(out, "state UP") && !strings.Contains(out, ",UP") {
		t.Fatalf("bridge %s not up on the host: %v %s", bridge, err, out)
	}
	gw := docker(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", n)
	if out, _ := run("ip", "-o", "addr", "show", bridge); !strings.Contains(out, " "+gw+"/") {
		t.Fatalf("bridge %s lacks gateway %s: %s", bridge, gw, out)
	}

	// prune removes an unused vxbridge network and all it owned.
	label := "vxt-prune=" + id[:8]
	pn := name(t, "prune")
	pid := docker(t, "network", "create", "-d", driverName, "--label", label, pn)
	subnets := strings.Fields(docker(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", pid))
	if out := docker(t, "network", "prune", "-f", "--filter", "label="+label); !strings.Contains(out, pn) {
		t.Fatalf("network prune did not remove %s: %s", pn, out)
	}
	if out, _ := run("docker", "network", "inspect", pn); !notFound(out) {
		t.Fatalf("%s still exists after prune: %s", pn, out)
	}
	assertNetworkGone(t, pid, subnets)
}

func TestContainersReachEachOtherByIPAndName(t *testing.T) {
	n, _ := network(t, "-d", driverName, name(t, "my-bridge"))
	db := container(t, "--name", name(t, "db"), "--network", n, "--network-alias", "mysql")
	// web starts on Docker's default bridge, then joins the vxbridge network.
	web := container(t, "--name", name(t, "web"))
	docker(t, "network", "connect", n, web)
	webEP := endpointID(t, web, n)

	mustPing(t, db, ipOf(t, web, n).String())
	mustPing(t, web, ipOf(t, db, n).String())
	mustPing(t, db, web)
	mustPing(t, web, db)
	mustPing(t, web, "mysql") // --network-alias

	app := container(t, "--name", name(t, "app"), "--network", n, "--link", db+":database")
	mustPing(t, app, "database") // --link alias on a user-defined network

	webIP := ipOf(t, web, n)
	docker(t, "network", "disconnect", n, web)
	mustNotPing(t, db, webIP.String())
	mustNotPing(t, web, db)
	if linkExists("vxv" + webEP[:12]) {
		t.Fatalf("veth of disconnected endpoint still exists")
	}
	mustPing(t, db, app) // the others are unaffected
}

// twoNetworks makes networks na and nb, container a on na, b on nb, and
// ab on both (started on na, connected to nb).
func twoNetworks(t *testing.T) (na, nb, a, b, ab string) {
	t.Helper()
	na, _ = network(t, "-d", driverName, name(t, "front"))
	nb, _ = network(t, "-d", driverName, name(t, "back"))
	a = container(t, "--name", name(t, "a"), "--network", na)
	b = container(t, "--name", name(t, "b"), "--network", nb)
	ab = container(t, "--name", name(t, "ab"), "--network", na)
	docker(t, "network", "connect", nb, ab)
	return
}

func TestOneContainerOnTwoNetworks(t *testing.T) {
	na, nb, a, b, ab := twoNetworks(t)

	links := exec_(t, ab, "ip", "-o", "addr", "show")
	for _, want := range []string{ipOf(t, ab, na).String(), ipOf(t, ab, nb).String()} {
		if !strings.Contains(links, want+"/") {
			t.Fatalf("%s lacks address %s:\n%s", ab, want, links)
		}
	}
	if !strings.Contains(links, "eth0") || !strings.Contains(links, "eth1") {
		t.Fatalf("want eth0 and eth1 in %s:\n%s", ab, links)
	}
	mustPing(t, ab, a)
	mustPing(t, ab, b)
	mustPing(t, a, ab)
	mustPing(t, b, ab)
}

func TestOwnIPAMWithSubnetGatewayRangeAux(t *testing.T) {
	n, id := network(t, "-d", driverName, "--ipam-driver", driverName,
		"--subnet", "10.231.0.0/24", "--gateway", "10.231.0.254", "--ip-range", "10.231.0.128/25",
		"--aux-address", "printer=10.231.0.130", name(t, "ipam"))
	if out, _ := run("ip", "-o", "addr", "show", "vxb-"+id[:11]); !strings.Contains(out, "10.231.0.254/24") {
		t.Fatalf("bridge lacks gateway 10.231.0.254/24: %s", out)
	}
	rng := netip.MustParsePrefix("10.231.0.128/25")
	var dyn []string
	for i := 0; i < 3; i++ {
		c := container(t, "--name", name(t, fmt.Sprintf("dyn%d", i)), "--network", n)
		ip := ipOf(t, c, n)
		if !rng.Contains(ip) || ip.String() == "10.231.0.130" || ip.String() == "10.231.0.254" {
			t.Fatalf("dynamic address %s: want inside %s, not the aux or gateway address", ip, rng)
		}
		dyn = append(dyn, c)
	}
	fixed := container(t, "--name", name(t, "fixed"), "--network", n, "--ip", "10.231.0.10")
	if got := ipOf(t, fixed, n).String(); got != "10.231.0.10" {
		t.Fatalf("--ip 10.231.0.10: got %s", got)
	}
	mustPing(t, fixed, dyn[0])
	mustPing(t, dyn[2], "10.231.0.10")

	pool := findPool(t, "10.231.0.0/24")
	for _, want := range []string{"10.231.0.254", "10.231.0.130", "10.231.0.10"} {
		if !slices.Contains(pool.Allocated, want) {
			t.Fatalf("pool allocations %v lack %s", pool.Allocated, want)
		}
	}
	if len(pool.Allocated) != 2+4 {
		t.Fatalf("pool allocations %v: want gateway, aux and 4 containers", pool.Allocated)
	}
}

func findPool(t *testing.T, prefix string) (p struct {
	ID        string
	Pool      string
	Allocated []string
}) {
	t.Helper()
	for _, p := range state(t).Pools {
		if p.Pool == prefix {
			return p
		}
	}
	t.Fatalf("no pool %s in plugin state", prefix)
	return
}

func TestAutomaticSubnetsNeverOverlap(t *testing.T) {
	// Docker's own bridge network takes a subnet first.
	builtin, _ := network(t, "-d", "bridge", name(t, "builtin"))
	taken := []netip.Prefix{netip.MustParsePrefix(docker(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", builtin))}
	for _, r := range hostRoutes(t) {
		taken = append(taken, r)
	}
	for i := 0; i < 3; i++ {
		n, _ := network(t, "-d", driverName, "--ipam-driver", driverName, name(t, fmt.Sprintf("auto%d", i)))
		p := netip.MustParsePrefix(docker(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", n))
		for _, o := range taken {
			if p.Overlaps(o) {
				t.Fatalf("automatic subnet %s of %s overlaps %s", p, n, o)
			}
		}
		taken = append(taken, p)
	}
}

// hostRoutes lists the host's IPv4 routes except the default one.
func hostRoutes(t *testing.T) []netip.Prefix {
	out, err := run("ip", "-4", "route", "show")
	if err != nil {
		t.Fatalf("ip route: %v", err)
	}
	var rs []netip.Prefix
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "default" {
			continue
		}
		if p, err := netip.ParsePrefix(f[0]); err == nil {
			rs = append(rs, p)
		}
	}
	return rs
}

func TestIPv6BetweenContainers(t *testing.T) {
	n, _ := network(t, "-d", driverName, "--ipam-driver", driverName, "--ipv6", "--subnet", "fd7a:1::/64", name(t, "v6"))
	a := container(t, "--name", name(t, "a6"), "--network", n)
	b := container(t, "--name", name(t, "b6"), "--network", n)
	ip := docker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).GlobalIPv6Address}}`, n), b)
	addr, err := netip.ParseAddr(ip)
	if err != nil || !netip.MustParsePrefix("fd7a:1::/64").Contains(addr) {
		t.Fatalf("IPv6 address of %s: %q, want one in fd7a:1::/64", b, ip)
	}
	mustPing(t, a, addr.String(), "-6")
	mustPing(t, a, ipOf(t, b, n).String()) // and IPv4 beside it

	// Without --subnet, vxbridge's IPAM picks an IPv6 /64 too.
	auto, _ := network(t, "-d", driverName, "--ipam-driver", driverName, "--ipv6", name(t, "v6auto"))
	subnets := docker(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", auto)
	var v6 netip.Prefix
	for _, s := range strings.Fields(subnets) {
		if p := netip.MustParsePrefix(s); p.Addr().Is6() {
			v6 = p
		}
	}
	if !v6.IsValid() || v6.Bits() != 64 || !netip.MustParsePrefix("fd76:7862::/32").Overlaps(v6) {
		t.Fatalf("automatic IPv6 subnet: %q, want a /64 in fd76:7862::/32", subnets)
	}
	c := container(t, "--name", name(t, "c6"), "--network", auto)
	d := container(t, "--name", name(t, "d6"), "--network", auto)
	ip6 := docker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).GlobalIPv6Address}}`, auto), d)
	mustPing(t, c, ip6, "-6")
}

func TestMTUOption(t *testing.T) {
	n, id := network(t, "-d", driverName, "-o", "com.docker.network.driver.mtu=1400", name(t, "mtu"))
	c := container(t, "--name", name(t, "mtu"), "--network", n)
	if got := exec_(t, c, "cat", "/sys/class/net/eth0/mtu"); got != "1400" {
		t.Fatalf("MTU inside the container: %s, want 1400", got)
	}
	if out, _ := run("ip", "-o", "link", "show", "vxb-"+id[:11]); !strings.Contains(out, "mtu 1400") {
		t.Fatalf("bridge MTU: %s", out)
	}
}

func TestNoneAndHostNetworksBesideVxbridge(t *testing.T) {
	n, id := network(t, "-d", driverName, name(t, "beside"))
	a := container(t, "--name", name(t, "a"), "--network", n)
	b := container(t, "--name", name(t, "b"), "--network", n)

	links := docker(t, "run", "--rm", "--network", "none", image, "ip", "-o", "link", "show")
	if got := strings.Count(strings.TrimSpace(links), "\n") + 1; got != 1 || !strings.Contains(links, " lo:") {
		t.Fatalf("--network none: want only lo, got:\n%s", links)
	}
	// --network host sees the host's interfaces, vxbridge's bridge among them.
	if out := docker(t, "run", "--rm", "--network", "host", image, "ip", "-o", "link", "show", "vxb-"+id[:11]); !strings.Contains(out, "vxb-"+id[:11]) {
		t.Fatalf("--network host does not see the host's bridge: %s", out)
	}
	mustPing(t, a, b)
}
