package names

import (
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/vxbridge/vxbridge/cluster"
)

// The resolver on loopback, asked from addresses of 127/8 standing in for
// containers of two overlays (Linux answers for all of 127/8 on lo).

var (
	defs = []cluster.Overlay{
		{Name: "front", Subnet4: netip.MustParsePrefix("127.0.1.0/24"), Subnet6: netip.MustParsePrefix("fd00:1::/64")},
		{Name: "back", Subnet4: netip.MustParsePrefix("127.0.2.0/24")},
	}
	eps = []cluster.Endpoint{
		{Overlay: "front", Host: "b", ID: "1", IPv4: netip.MustParseAddr("127.0.1.10"), Names: []string{"mysql", "db"}},
		{Overlay: "front", Host: "c", ID: "2", IPv4: netip.MustParseAddr("127.0.1.11"), Names: []string{"db2", "db"}},
		{Overlay: "front", Host: "b", ID: "3", IPv4: netip.MustParseAddr("127.0.1.12"), IPv6: netip.MustParseAddr("fd00:1::12"), Names: []string{"Web"}},
		{Overlay: "front", Host: "a", ID: "4", IPv4: netip.MustParseAddr("127.0.1.13"), Names: []string{"local"}},
		{Overlay: "back", Host: "b", ID: "5", IPv4: netip.MustParseAddr("127.0.2.10"), Names: []string{"secret"}},
		{Overlay: "front", Host: "b", ID: "6", IPv4: netip.MustParseAddr("127.0.1.14")}, // names not learned yet
	}
)

// upstream serves "upstream.test." as 192.0.2.1 and NXDOMAIN for the rest.
func upstream(t *testing.T) string {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(q)
		if q.Question[0].Name == "upstream.test." && q.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR("upstream.test. 60 IN A 192.0.2.1")
			r.Answer = append(r.Answer, rr)
		} else {
			r.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(r)
	})
	pc, l, err := listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	return pc.LocalAddr().String()
}

func start(t *testing.T, ups ...string) (*Table, string) {
	t.Helper()
	tb := &Table{}
	tb.Update("a", defs, eps)
	s, err := Serve(netip.MustParseAddrPort("127.0.0.1:0"), tb, ups, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return tb, s.Addr().String()
}

func ask(t *testing.T, server, from, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Dialer: &net.Dialer{}}
	if network == "tcp" {
		c.Dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	} else {
		c.Dialer.LocalAddr = &net.UDPAddr{IP: net.ParseIP(from)}
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := c.Exchange(q, server)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", network, name, from, err)
	}
	return r
}

func addrs(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	return out
}

func TestRemoteNamesByOverlayOfTheAsker(t *testing.T) {
	_, srv := start(t, upstream(t))
	cases := []struct {
		from, network, name string
		qtype               uint16
		rcode               int
		want                []string
	}{
		{"127.0.1.5", "udp", "mysql", dns.TypeA, dns.RcodeSuccess, []string{"127.0.1.10"}},
		{"127.0.1.5", "tcp", "mysql", dns.TypeA, dns.RcodeSuccess, []string{"127.0.1.10"}},
		{"127.0.1.5", "udp", "mysql.front", dns.TypeA, dns.RcodeSuccess, []string{"127.0.1.10"}},
		{"127.0.1.5", "udp", "MySQL.Front", dns.TypeA, dns.RcodeSuccess, []string{"127.0.1.10"}},
		{"127.0.1.5", "udp", "web", dns.TypeA, dns.RcodeSuccess, []string{"127.0.1.12"}},
		// the same alias on two hosts: both
		{"127.0.1.5", "udp", "db", dns.TypeA, dns.RcodeSuccess, []string{"127.0.1.10", "127.0.1.11"}},
		// a v4-only name: NOERROR and no data, never REFUSED
		{"127.0.1.5", "udp", "mysql", dns.TypeAAAA, dns.RcodeSuccess, nil},
		{"127.0.1.5", "udp", "mysql", dns.TypeMX, dns.RcodeSuccess, nil},
		{"127.0.1.5", "udp", "web", dns.TypeAAAA, dns.RcodeSuccess, []string{"fd00:1::12"}},
		// this host's own containers are Docker's to answer: forwarded
		{"127.0.1.5", "udp", "local", dns.TypeA, dns.RcodeNameError, nil},
		// another overlay's name, and this overlay's name from another
		{"127.0.1.5", "udp", "secret", dns.TypeA, dns.RcodeNameError, nil},
		{"127.0.1.5", "udp", "secret.back", dns.TypeA, dns.RcodeNameError, nil},
		{"127.0.2.5", "udp", "mysql", dns.TypeA, dns.RcodeNameError, nil},
		{"127.0.2.5", "udp", "secret", dns.TypeA, dns.RcodeSuccess, []string{"127.0.2.10"}},
		{"127.0.3.5", "udp", "mysql", dns.TypeA, dns.RcodeNameError, nil},
		// everything else goes upstream, over the protocol it came by
		{"127.0.1.5", "udp", "upstream.test", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.1"}},
		{"127.0.1.5", "tcp", "upstream.test", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.1"}},
		{"127.0.1.5", "udp", "mysql.back", dns.TypeA, dns.RcodeNameError, nil},
	}
	for _, c := range cases {
		r := ask(t, srv, c.from, c.network, c.name, c.qtype)
		if r.Rcode != c.rcode || !slices.Equal(addrs(r), c.want) {
			t.Errorf("%s %s %s from %s: %s %v; want %s %v", c.network, dns.TypeToString[c.qtype], c.name, c.from,
				dns.RcodeToString[r.Rcode], addrs(r), dns.RcodeToString[c.rcode], c.want)
		}
	}
}

func TestRemovedEndpointIsForgotten(t *testing.T) {
	tb, srv := start(t, upstream(t))
	r := ask(t, srv, "127.0.1.5", "udp", "mysql", dns.TypeA)
	if len(r.Answer) != 1 || r.Answer[0].Header().Ttl != TTL {
		t.Fatalf("mysql: %v; want one answer with TTL %d", r.Answer, TTL)
	}
	tb.Update("a", defs, eps[1:])
	if r = ask(t, srv, "127.0.1.5", "udp", "mysql", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("mysql after removal: %s %v; want it forwarded (NXDOMAIN)", dns.RcodeToString[r.Rcode], addrs(r))
	}
	if got := addrs(ask(t, srv, "127.0.1.5", "udp", "db", dns.TypeA)); !slices.Equal(got, []string{"127.0.1.11"}) {
		t.Fatalf("db after removal of one of two: %v", got)
	}
}

func TestNoUpstreamIsServfail(t *testing.T) {
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	dead := pc.LocalAddr().String()
	pc.Close()
	_, srv := start(t, dead)
	if r := ask(t, srv, "127.0.1.5", "udp", "upstream.test", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %s; want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if got := addrs(ask(t, srv, "127.0.1.5", "udp", "mysql", dns.TypeA)); len(got) != 1 {
		t.Fatalf("own names without upstream: %v", got)
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# x\nnameserver 10.0.0.2\nnameserver ::1\nsearch example.com\noptions ndots:2\n"), 0o644)
	got, err := Upstreams(p)
	if err != nil || !slices.Equal(got, []string{"10.0.0.2:53", "[::1]:53"}) {
		t.Fatalf("Upstreams = %v, %v", got, err)
	}
	if _, err := Upstreams(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("a missing resolv.conf gave no error")
	}
}

// A query sent to the resolver's own address from another network's
// address (Docker's bridge, say) is answered by the overlays of the local
// container holding that address; a container on internal overlays only
// gets no other names.
func TestAskersByAnyAddress(t *testing.T) {
	tb, srv := start(t, upstream(t))
	internal := cluster.Overlay{Name: "inner", Internal: true, Subnet4: netip.MustParsePrefix("127.0.4.0/24")}
	tb.Update("a", append(slices.Clone(defs), internal), append(slices.Clone(eps),
		cluster.Endpoint{Overlay: "inner", Host: "b", ID: "7", IPv4: netip.MustParseAddr("127.0.4.10"), Names: []string{"vault"}}))
	tb.SetAskers(map[netip.Addr]Asker{
		netip.MustParseAddr("127.0.9.2"): {Overlays: []string{"back"}, External: true},
		netip.MustParseAddr("127.0.4.6"): {Overlays: []string{"inner"}, External: true}, // also on an outside network
	})
	cases := []struct {
		from, name string
		rcode      int
		want       []string
	}{
		{"127.0.9.2", "secret", dns.RcodeSuccess, []string{"127.0.2.10"}},
		{"127.0.9.2", "mysql", dns.RcodeNameError, nil}, // front: not its overlay
		{"127.0.9.2", "upstream.test", dns.RcodeSuccess, []string{"192.0.2.1"}},
		{"127.0.9.3", "secret", dns.RcodeNameError, nil}, // unknown address: forwarded
		{"127.0.4.5", "vault", dns.RcodeSuccess, []string{"127.0.4.10"}},
		{"127.0.4.5", "upstream.test", dns.RcodeRefused, nil}, // internal only: not forwarded
		{"127.0.4.6", "upstream.test", dns.RcodeSuccess, []string{"192.0.2.1"}},
	}
	for _, c := range cases {
		r := ask(t, srv, c.from, "udp", c.name, dns.TypeA)
		if r.Rcode != c.rcode || !slices.Equal(addrs(r), c.want) {
			t.Errorf("A %s from %s: %s %v; want %s %v", c.name, c.from,
				dns.RcodeToString[r.Rcode], addrs(r), dns.RcodeToString[c.rcode], c.want)
		}
	}
}
