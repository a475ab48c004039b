package driver

import (
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	api "github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The NOTRACK chain holds, per network and family, the gateway's exemption
// and the subnet's CT --notrack, and per published container port the
// exemption of its answers; exemptions stay above every CT --notrack
// whatever order they come in, and each goes with its network or port.
func TestNotrackRulesFollowNetworkAndPorts(t *testing.T) {
	inNewNetns(t, func() {
		fw, err := newFirewall()
		if err != nil {
			t.Fatal(err)
		}
		if err := fw.setup(); err != nil {
			t.Fatal(err)
		}
		n := testNetwork()
		nt := `-m comment --comment "vxbridge:` + n.ID[:12] + `"`
		// Two host ports for one container port: its exemption goes in once.
		ep := &Endpoint{ID: strings.Repeat("e", 64), NetworkID: n.ID, Addr4: netip.MustParsePrefix("10.9.0.2/24"),
			Ports: []PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}, {Proto: "tcp", HostPort: 8081, ContainerPort: 80}}}
		pt := `-m comment --comment "vxbridge:` + n.ID[:12] + ":" + ep.ID[:12] + `"`
		check := func(what string, v4, v6 []string) {
			t.Helper()
			for _, c := range []struct {
				ipt  *iptables.IPTables
				want []string
			}{{fw.v4, v4}, {fw.v6, v6}} {
				got, err := c.ipt.List("raw", chainNotrack)
				if err != nil {
					t.Fatal(err)
				}
				if want := append([]string{"-N " + chainNotrack}, c.want...); !slices.Equal(got, want) {
					t.Fatalf("%s: %s is\n%s\nwant\n%s", what, chainNotrack, strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
			}
		}
		gw4 := "-A " + chainNotrack + " -d 10.9.0.1/32 -i vxb-test " + nt + " -j RETURN"
		sub4 := "-A " + chainNotrack + " -d 10.9.0.0/24 -i vxb-test " + nt + " -j CT --notrack"
		port := "-A " + chainNotrack + " -s 10.9.0.2/32 -i vxb-test -p tcp -m tcp --sport 80 " + pt + " -j RETURN"
		gw6 := "-A " + chainNotrack + " -d fd09::1/128 -i vxb-test " + nt + " -j RETURN"
		sub6 := "-A " + chainNotrack + " -d fd09::/64 -i vxb-test " + nt + " -j CT --notrack"

		for _, ipt := range []*iptables.IPTables{fw.v4, fw.v6} {
			if ok, err := ipt.Exists("raw", "PREROUTING", "-j", chainNotrack); err != nil || !ok {
				t.Fatalf("no jump to %s in raw PREROUTING: %v", chainNotrack, err)
			}
		}
		if err := fw.ensure(networkRules(n), true); err != nil {
			t.Fatal(err)
		}
		check("network", []string{gw4, sub4}, []string{gw6, sub6})
		if err := fw.ensure(endpointPortRules(n, ep), false); err != nil {
			t.Fatal(err)
		}
		check("published port", []string{port, gw4, sub4}, []string{gw6, sub6})
		// A lost exemption comes back above the CT --notrack (as Repair
		// re-asserts it).
		if err := fw.v4.Delete("raw", chainNotrack, spec([]string{"-i", "vxb-test", "-d", "10.9.0.1"}, tag(n.ID[:12]), []string{"-j", "RETURN"})...); err != nil {
			t.Fatal(err)
		}
		if err := fw.ensure(networkRules(n), true); err != nil {
			t.Fatal(err)
		}
		check("re-asserted", []string{gw4, port, sub4}, []string{gw6, sub6})
		if err := fw.remove(endpointPortRules(n, ep), false); err != nil {
			t.Fatal(err)
		}
		check("unpublished", []string{gw4, sub4}, []string{gw6, sub6})
		if err := fw.remove(networkRules(n), true); err != nil {
			t.Fatal(err)
		}
		check("network removed", nil, nil)
	})
}

// Between two containers of one bridge, nothing is tracked; what reaches
// the gateway is, and so is a neighbour's connection to a port published
// by the other (DNATed at the gateway, answered straight over the bridge,
// un-DNATed by conntrack). Runs the real path: br_netfilter (its sysctls
// are on in a new namespace), the driver's rules, two namespaces as
// containers.
func TestNeighbourTrafficIsNotTracked(t *testing.T) {
	inNewNetns(t, func() {
		if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
			t.Skip("br_netfilter is not loaded (modprobe br_netfilter): without it nothing bridged is tracked anyway")
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
		d := newTestDriver(t)
		nid := strings.Repeat("4", 64)
		if err := d.CreateNetwork(&api.CreateNetworkRequest{NetworkID: nid, IPv4Data: []*api.IPAMData{{Pool: "10.9.0.0/24", Gateway: "10.9.0.1/24"}}}); err != nil {
			t.Fatal(err)
		}
		c1 := container(t, d, nid, strings.Repeat("5", 64), "10.9.0.2")
		c2 := container(t, d, nid, strings.Repeat("6", 64), "10.9.0.3")
		if err := d.ProgramExternalConnectivity(&api.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: strings.Repeat("6", 64),
			Options: portmapOptions(t, `[{"Proto":6,"Port":80,"HostPort":8080}]`)}); err != nil {
			t.Fatal(err)
		}

		// UDP c1 -> c2, and c1 -> the gateway (a socket of the host).
		srv := in(t, c2, func() (io.Closer, error) { return net.ListenPacket("udp4", "10.9.0.3:9999") }).(net.PacketConn)
		host, err := net.ListenPacket("udp4", "10.9.0.1:9998")
		if err != nil {
			t.Fatal(err)
		}
		defer host.Close()
		for _, to := range []struct {
			addr string
			recv net.PacketConn
		}{{"10.9.0.3:9999", srv}, {"10.9.0.1:9998", host}} {
			cl := in(t, c1, func() (io.Closer, error) { return net.Dial("udp4", to.addr) }).(net.Conn)
			if _, err := cl.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			cl.Close()
			to.recv.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, _, err := to.recv.ReadFrom(make([]byte, 8)); err != nil {
				t.Fatalf("UDP to %s: %v", to.addr, err)
			}
		}

		// TCP c1 -> the gateway's published port, DNATed to c2.
		ln := in(t, c2, func() (io.Closer, error) { return net.Listen("tcp4", "10.9.0.3:80") }).(net.Listener)
		defer ln.Close()
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Write([]byte("hello"))
				c.Close()
			}
		}()
		conn := in(t, c1, func() (io.Closer, error) { return net.DialTimeout("tcp4", "10.9.0.1:8080", 5*time.Second) }).(net.Conn)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(conn); err != nil || string(b) != "hello" {
			t.Fatalf("neighbour through the published port: read %q, %v", b, err)
		}
		conn.Close()

		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		tracked := map[uint16]bool{}
		for _, f := range flows {
			tracked[f.Forward.DstPort] = true
		}
		if tracked[9999] {
			t.Errorf("c1 -> c2 (UDP 9999) is tracked:\n%v", flows)
		}
		if !tracked[9998] || !tracked[8080] {
			t.Errorf("want the gateway's UDP 9998 and the DNATed 8080 tracked:\n%v", flows)
		}
	})
}

// container moves an endpoint's peer into a new namespace, as dockerd
// does, with its address and a default route through the gateway.
func container(t *testing.T, d *Driver, nid, eid, addr string) netns.NsHandle {
	t.Helper()
	if _, err := d.CreateEndpoint(&api.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Interface: &api.EndpointInterface{Address: addr + "/24"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Join(&api.JoinRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	if err := netns.Set(testNetns); err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName(peerName(eid))
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if peer, err = h.LinkByName(peerName(eid)); err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(addr + "/24")
	if err := h.AddrAdd(peer, a); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: net.ParseIP("10.9.0.1")}); err != nil {
		t.Fatal(err)
	}
	return ns
}

// in runs open with this thread in ns: the socket it makes lives there.
func in(t *testing.T, ns netns.NsHandle, open func() (io.Closer, error)) io.Closer {
	t.Helper()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	c, openErr := open()
	if err := netns.Set(testNetns); err != nil {
		t.Fatal(err)
	}
	if openErr != nil {
		t.Fatal(openErr)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
