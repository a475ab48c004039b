//go:build e2e

package tests

import (
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A neighbour on a vxbridge bridge (here a hand-made namespace, as a
// container with NET_ADMIN could be) that routes 127.0.0.1 through the
// gateway must reach nothing the host serves on loopback: neither a
// program listening on 127.0.0.1 nor a port published on 127.0.0.1
// (CVE-2020-8558). The host itself still reaches the ports it published
// on 127.0.0.1.
const (
	neighbourNS     = "vxt-nbr"
	neighbourHostIf = "vxt-nh"
)

func TestBridgeNeighbourCannotReachHostLoopback(t *testing.T) {
	n, id := network(t, "-d", driverName, "--ipam-driver", driverName,
		"--subnet", "10.237.0.0/24", "--gateway", "10.237.0.1", name(t, "lo"))
	web := server(t, name(t, "web"), "--network", n, "-p", "127.0.0.1:18130:80", "-p", "127.0.0.1:18131:53/udp")
	neighbour(t, "vxb-"+id[:11], "10.237.0.200/24", "10.237.0.1")
	inNS := func(args ...string) (string, error) {
		return run(append([]string{"ip", "netns", "exec", neighbourNS}, args...)...)
	}

	// The host's own way in stays open.
	mustGet(t, onHost, "the host", "127.0.0.1", "18130", web)
	if got := udpAsk(onHost, udpechoBin, "127.0.0.1:18131"); got != "echo:ping" {
		t.Fatalf("UDP 127.0.0.1:18131 from the host: got %q", got)
	}
	// The neighbour is really on the bridge: it reaches the container and
	// the gateway.
	mustGet(t, inNS, "the neighbour", ipOf(t, web, n).String(), "80", web)
	if out, err := inNS("busybox", "ping", "-c", "1", "-W", "2", "10.237.0.1"); err != nil {
		t.Fatalf("the neighbour cannot ping the gateway: %v %s", err, out)
	}

	tcpPort, accepted := loopbackTCP(t)
	udpPort, received := loopbackUDP(t)
	if got := httpGet(inNS, "127.0.0.1", tcpPort, "/"); got != "" || accepted.Load() != 0 {
		t.Fatalf("the neighbour reached the host's 127.0.0.1:%s over TCP (answer %q, %d connections)", tcpPort, got, accepted.Load())
	}
	udpAsk(inNS, udpechoBin, "127.0.0.1:"+udpPort)
	time.Sleep(500 * time.Millisecond)
	if received.Load() != 0 {
		t.Fatalf("the neighbour's UDP datagrams reached the host's 127.0.0.1:%s (%d)", udpPort, received.Load())
	}
	mustNotGet(t, inNS, "the neighbour", "127.0.0.1", "18130")
	if got := udpAsk(inNS, udpechoBin, "127.0.0.1:18131"); got != "" {
		t.Fatalf("the neighbour reached UDP 127.0.0.1:18131, published on the host's loopback only: %q", got)
	}
	// And nothing of the above broke the host's way in.
	mustGet(t, onHost, "the host", "127.0.0.1", "18130", web)
}

// neighbour makes namespace neighbourNS, joined to bridge by a veth, with
// addr and a route to 127.0.0.1 through gw. Its lo stays down: with lo up,
// 127.0.0.1 would be its own. Its veth takes answers from 127.0.0.1
// (route_localnet), as an attacker would set it.
func neighbour(t *testing.T, bridge, addr, gw string) {
	t.Helper()
	t.Cleanup(func() {
		run("ip", "netns", "del", neighbourNS)
		run("ip", "link", "del", neighbourHostIf)
	})
	for _, s := range [][]string{
		{"ip", "netns", "add", neighbourNS},
		{"ip", "link", "add", neighbourHostIf, "type", "veth", "peer", "name", "vxt-nn", "netns", neighbourNS},
		{"ip", "link", "set", neighbourHostIf, "master", bridge, "up"},
		{"ip", "-n", neighbourNS, "addr", "add", addr, "dev", "vxt-nn"},
		{"ip", "-n", neighbourNS, "link", "set", "vxt-nn", "up"},
		{"ip", "-n", neighbourNS, "route", "add", "127.0.0.1/32", "via", gw},
		{"ip", "netns", "exec", neighbourNS, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/vxt-nn/route_localnet"},
	} {
		if out, err := run(s...); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(s, " "), err, out)
		}
	}
}

// loopbackTCP serves "secret" on a free port of the host's 127.0.0.1 and
// counts the connections it accepts.
func loopbackTCP(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\nsecret\n")
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port, &n
}

// loopbackUDP counts the datagrams that reach a free port of the host's
// 127.0.0.1.
func loopbackUDP(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var n atomic.Int32
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	_, port, _ := net.SplitHostPort(c.LocalAddr().String())
	return port, &n
}
