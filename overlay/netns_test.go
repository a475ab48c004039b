package overlay

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Kernel tests build their "hosts" and "containers" as unnamed network
// namespaces: nothing outside them is touched, and each disappears with
// everything in it when the test closes its handle.

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces (CI runs it as root)")
	}
}

// newNS returns a fresh network namespace with lo up, and a netlink handle
// on it; both are closed when the test ends.
func newNS(t *testing.T) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // unshares and switches this thread
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err) // the thread stays locked, so it dies with the test goroutine
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close() })
	h := handleAt(t, ns)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ns, h
}

func handleAt(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// inNS runs fn on a thread switched into ns: the sockets it opens and the
// processes it starts live there.
func inNS(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	fn()
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	runtime.UnlockOSThread()
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newTestOverlay starts an Overlay programming namespace ns, on a handle
// of its own; it is closed when the test ends.
func newTestOverlay(t *testing.T, ns netns.NsHandle) *Overlay {
	t.Helper()
	o := newOverlay(handleAt(t, ns), quietLog(), nil)
	t.Cleanup(o.Close)
	return o
}

func mustLink(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func addAddr(t *testing.T, h *netlink.Handle, link netlink.Link, cidr string) {
	t.Helper()
	p := netip.MustParsePrefix(cidr)
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once
	}
	if err := h.AddrAdd(link, a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, link.Attrs().Name, err)
	}
}

func linkUp(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	if err := h.LinkSetUp(mustLink(t, h, name)); err != nil {
		t.Fatal(err)
	}
}

// addBridge makes bridge br0 with the gateway addresses every host's
// bridge of an overlay carries. Its MAC is set, as Docker sets its
// bridges', so enslaving ports never changes it.
func addBridge(t *testing.T, h *netlink.Handle, host byte, mtu int) {
	t.Helper()
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU = "br0", mtu
	la.HardwareAddr = net.HardwareAddr{0x02, 0x42, 0xbb, 0, 0, host}
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		t.Fatal(err)
	}
	br := mustLink(t, h, "br0")
	addAddr(t, h, br, "10.200.0.1/24")
	addAddr(t, h, br, "fd00:200::1/64")
	linkUp(t, h, "br0")
}

// addContainer makes a container namespace whose eth0 (address 10.200.0.n
// and fd00:200::n, MAC 02:42:0a:c8:00:n) is veth'ed onto the host's br0.
// It returns the namespace, a handle on it, and the container as a peer
// behind vtep.
func addContainer(t *testing.T, host *netlink.Handle, n byte, mtu int, vtep netip.Addr) (netns.NsHandle, *netlink.Handle, Peer) {
	t.Helper()
	ns, h := newNS(t)
	p := testPeer(n, vtep.String())
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU = fmt.Sprintf("vc%d", n), mtu
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerHardwareAddr: p.MAC, PeerMTU: uint32(mtu), PeerNamespace: netlink.NsFd(ns)}
	if err := host.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	if err := host.LinkSetMaster(mustLink(t, host, la.Name), mustLink(t, host, "br0")); err != nil {
		t.Fatal(err)
	}
	linkUp(t, host, la.Name)
	eth := mustLink(t, h, "eth0")
	addAddr(t, h, eth, fmt.Sprintf("%s/24", p.IPv4))
	addAddr(t, h, eth, fmt.Sprintf("%s/64", p.IPv6))
	linkUp(t, h, "eth0")
	return ns, h, p
}

var pingSeq atomic.Uint32

// ping sends one ICMP echo request from inside ns to dst and waits up to
// timeout for its reply (raw sockets: no ping binary needed).
func ping(t *testing.T, ns netns.NsHandle, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	network, laddr, request, reply := "ip4:icmp", "0.0.0.0", byte(8), byte(0)
	if dst.Is6() {
		network, laddr, request, reply = "ip6:ipv6-icmp", "::", 128, 129
	}
	var conn net.PacketConn
	var err error
	inNS(t, ns, func() { conn, err = net.ListenPacket(network, laddr) })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	id, seq := uint16(os.Getpid()), uint16(pingSeq.Add(1))
	msg := make([]byte, 64)
	msg[0] = request
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	if dst.Is4() { // the kernel sums ICMPv6 itself
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
	}
	start := time.Now()
	if _, err := conn.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, err
	}
	conn.SetReadDeadline(start.Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return 0, fmt.Errorf("ping %s: %w", dst, err)
		}
		if n >= 8 && buf[0] == reply && from.(*net.IPAddr).IP.Equal(dst.AsSlice()) &&
			binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
			return time.Since(start), nil
		}
	}
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func mustPing(t *testing.T, ns netns.NsHandle, dst netip.Addr) {
	t.Helper()
	if _, err := ping(t, ns, dst, time.Second); err != nil {
		t.Fatalf("ping %s: %v", dst, err)
	}
}

func mustNotPing(t *testing.T, ns netns.NsHandle, dst netip.Addr) {
	t.Helper()
	if _, err := ping(t, ns, dst, 500*time.Millisecond); err == nil {
		t.Fatalf("ping %s answered, want no reply", dst)
	}
}

func stats(t *testing.T, h *netlink.Handle, name string) netlink.LinkStatistics {
	t.Helper()
	return *mustLink(t, h, name).Attrs().Statistics
}
