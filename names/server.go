package names

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// TTL of the answers: short, so a removed container is soon forgotten by
// any cache between the container and here.
const TTL = 5

// Server answers the Table's names and forwards every other query to the
// upstream servers, over the protocol it came by.
type Server struct {
	table     *Table
	upstreams []string // host:port
	log       *slog.Logger
	udp, tcp  *dns.Server
}

// Upstreams reads the name servers of a resolv.conf (the host's: a managed
// plugin sees the host's /etc/resolv.conf), as host:port.
func Upstreams(resolvConf string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, fmt.Errorf("read name servers: %w", err)
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out, nil
}

// Serve listens on addr (UDP and TCP) and answers until Close.
func Serve(addr netip.AddrPort, table *Table, upstreams []string, log *slog.Logger) (*Server, error) {
	s := &Server{table: table, upstreams: upstreams, log: log}
	pc, l, err := listen(addr)
	if err != nil {
		return nil, err
	}
	s.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.handle)}
	s.tcp = &dns.Server{Listener: l, Handler: dns.HandlerFunc(s.handle)}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				log.Error("name server stopped", "addr", addr, "err", err)
			}
		}()
	}
	return s, nil
}

// listen opens UDP and TCP on one address. For port 0 the kernel picks
// the UDP port, which TCP may already use: another is tried then.
func listen(addr netip.AddrPort) (net.PacketConn, net.Listener, error) {
	for tries := 0; ; tries++ {
		pc, err := net.ListenPacket("udp", addr.String())
		if err != nil {
			return nil, nil, fmt.Errorf("name server on udp %s: %w", addr, err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		if addr.Port() != 0 || tries == 20 {
			return nil, nil, fmt.Errorf("name server on tcp %s: %w", pc.LocalAddr(), err)
		}
	}
}

// Addr is the address the server listens on.
func (s *Server) Addr() netip.AddrPort {
	return s.udp.PacketConn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Close stops the server.
func (s *Server) Close() error {
	return errors.Join(s.udp.Shutdown(), s.tcp.Shutdown())
}

func (s *Server) handle(w dns.ResponseWriter, q *dns.Msg) {
	if r := s.answer(w.RemoteAddr(), q); r != nil {
		w.WriteMsg(r)
		return
	}
	if src, err := netip.ParseAddrPort(w.RemoteAddr().String()); err == nil && !s.table.Forwards(src.Addr()) {
		r := new(dns.Msg)
		r.SetRcode(q, dns.RcodeRefused)
		w.WriteMsg(r)
		return
	}
	w.WriteMsg(s.forward(w.RemoteAddr().Network(), q))
}

// answer returns the reply to a query for one of the table's names, or nil
// when the name is not the table's.
func (s *Server) answer(from net.Addr, q *dns.Msg) *dns.Msg {
	if len(q.Question) != 1 || q.Question[0].Qclass != dns.ClassINET {
		return nil
	}
	src, err := netip.ParseAddrPort(from.String())
	if err != nil {
		return nil
	}
	qn := q.Question[0]
	addrs, ok := s.table.Lookup(src.Addr(), qn.Name)
	if !ok {
		return nil
	}
	r := new(dns.Msg)
	r.SetReply(q)
	r.Authoritative = true
	r.RecursionAvailable = true
	// The name exists: a type it has no address of gets NOERROR with no
	// data (musl gives up on the whole lookup after REFUSED or NXDOMAIN).
	for _, a := range addrs {
		hdr := dns.RR_Header{Name: qn.Name, Class: dns.ClassINET, Ttl: TTL}
		switch {
		case a.Is4() && (qn.Qtype == dns.TypeA || qn.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeA
			r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && (qn.Qtype == dns.TypeAAAA || qn.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeAAAA
			r.Answer = append(r.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	return r
}

// forward asks the upstream servers in turn; SERVFAIL when none answers.
func (s *Server) forward(network string, q *dns.Msg) *dns.Msg {
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	var last error
	for _, up := range s.upstreams {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r, _, err := c.ExchangeContext(ctx, q, up)
		cancel()
		if err == nil {
			return r
		}
		last = err
	}
	if len(q.Question) > 0 {
		s.log.Debug("no upstream answered", "name", q.Question[0].Name, "upstreams", s.upstreams, "err", last)
	}
	r := new(dns.Msg)
	r.SetRcode(q, dns.RcodeServerFailure)
	return r
}
