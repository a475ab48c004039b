package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Keys under which dockerd passes port publishing in the endpoint options.
const (
	keyPortMap      = "com.docker.network.portmap"
	keyExposedPorts = "com.docker.network.endpoint.exposedports"
)

// dockerPortBinding is one entry of com.docker.network.portmap as dockerd
// encodes it (libnetwork's types.PortBinding).
type dockerPortBinding struct {
	Proto       int
	IP          string
	Port        uint16
	HostIP      string
	HostPort    uint16
	HostPortEnd uint16
}

// PortBinding is one published port as vxbridge programmed it: HostPort is
// the port actually chosen (for -P, or a -p range, the plugin picks it).
type PortBinding struct {
	Proto         string
	HostIP        netip.Addr `json:",omitempty"`
	HostPort      uint16
	ContainerPort uint16
}

// String is the mapping as users read it: "0.0.0.0:8080->80/tcp".
func (b PortBinding) String() string {
	return fmt.Sprintf("%s->%d/%s", b.hostAddr(), b.ContainerPort, b.Proto)
}

func (b PortBinding) hostAddr() string {
	host := "0.0.0.0"
	if b.HostIP.IsValid() {
		host = b.HostIP.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(b.HostPort)))
}

// portRequest is a binding before its host port is chosen: a port in
// [HostPort, HostPortEnd], or any ephemeral one when both are 0.
type portRequest struct {
	PortBinding
	HostPortEnd uint16
}

var protoNames = map[int]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}

// parsePortMap reads the requested bindings. defaultHostIP applies to
// bindings without a host address (-p 8080:80), as Docker's
// host_binding_ipv4 option does.
func parsePortMap(opts map[string]interface{}, defaultHostIP netip.Addr) ([]portRequest, error) {
	raw, ok := opts[keyPortMap]
	if !ok || raw == nil {
		return nil, nil
	}
	// Options arrive as decoded JSON; re-encode to reach the typed form.
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("malformed %s: %w", keyPortMap, err)
	}
	var in []dockerPortBinding
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("malformed %s: %w", keyPortMap, err)
	}
	out := make([]portRequest, 0, len(in))
	for _, pb := range in {
		proto, ok := protoNames[pb.Proto]
		if !ok {
			return nil, fmt.Errorf("publish port %d: protocol %d is not supported (tcp and udp are)", pb.Port, pb.Proto)
		}
		if pb.Port == 0 {
			return nil, fmt.Errorf("publish port: container port 0/%s is not a port", proto)
		}
		r := portRequest{PortBinding: PortBinding{Proto: proto, HostIP: defaultHostIP, HostPort: pb.HostPort, ContainerPort: pb.Port}, HostPortEnd: pb.HostPortEnd}
		if pb.HostIP != "" {
			ip, err := netip.ParseAddr(pb.HostIP)
			if err != nil {
				return nil, fmt.Errorf("publish port %d/%s: bad host address %q", pb.Port, proto, pb.HostIP)
			}
			r.HostIP = ip.Unmap()
		}
		if r.HostIP.IsValid() && !r.HostIP.Is4() {
			return nil, fmt.Errorf("publish port %d/%s on %s: only IPv4 host addresses can be published", pb.Port, proto, r.HostIP)
		}
		if r.HostIP.IsValid() && r.HostIP.IsUnspecified() {
			r.HostIP = netip.Addr{}
		}
		if r.HostPortEnd < r.HostPort {
			r.HostPortEnd = r.HostPort
		}
		out = append(out, r)
	}
	return out, nil
}

// reservation holds the host ports of one endpoint's bindings open, as
// Docker does, so no other program takes a port that DNAT sends elsewhere.
// Traffic never reaches these sockets: DNAT rewrites it first.
type reservation []io.Closer

func (r reservation) release() {
	for _, c := range r {
		c.Close()
	}
}

// reserve binds every requested host port, choosing one where the request
// leaves it open. Either all are bound or none stays bound.
func reserve(reqs []portRequest) ([]PortBinding, reservation, error) {
	var res reservation
	out := make([]PortBinding, 0, len(reqs))
	for _, r := range reqs {
		b, c, err := bindOne(r)
		if err != nil {
			res.release()
			return nil, nil, err
		}
		res = append(res, c)
		out = append(out, b)
	}
	return out, res, nil
}

func bindOne(r portRequest) (PortBinding, io.Closer, error) {
	b := r.PortBinding
	if r.HostPort == 0 {
		return bindPort(b) // the kernel picks from its ephemeral range
	}
	var lastErr error
	for p := int(r.HostPort); p <= int(r.HostPortEnd); p++ {
		b.HostPort = uint16(p)
		got, c, err := bindPort(b)
		if err == nil {
			return got, c, nil
		}
		lastErr = err
	}
	if r.HostPortEnd > r.HostPort {
		return b, nil, fmt.Errorf("no free host port in %d-%d/%s: %w", r.HostPort, r.HostPortEnd, r.Proto, lastErr)
	}
	return b, nil, lastErr
}

// bindPort binds b's host address and port (0: any free one) and returns
// the binding with the port the kernel gave. The socket is bound but never
// listens: it holds the port against other programs, yet a connection that
// somehow misses DNAT is refused instead of hanging in a backlog.
func bindPort(b PortBinding) (PortBinding, io.Closer, error) {
	sotype := unix.SOCK_STREAM
	if b.Proto == "udp" {
		sotype = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(unix.AF_INET, sotype|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return b, nil, fmt.Errorf("reserve host port %s/%s: %w", b.hostAddr(), b.Proto, err)
	}
	sa := &unix.SockaddrInet4{Port: int(b.HostPort)}
	if b.HostIP.IsValid() {
		sa.Addr = b.HostIP.As4()
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return b, nil, fmt.Errorf("host port %s/%s is already in use", b.hostAddr(), b.Proto)
		}
		return b, nil, fmt.Errorf("reserve host port %s/%s: %w", b.hostAddr(), b.Proto, err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return b, nil, fmt.Errorf("reserve host port %s/%s: %w", b.hostAddr(), b.Proto, err)
	}
	b.HostPort = uint16(got.(*unix.SockaddrInet4).Port)
	return b, os.NewFile(uintptr(fd), "port "+b.String()), nil
}
