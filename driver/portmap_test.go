package driver

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

// portmapOptions builds Options as dockerd sends them: decoded JSON.
func portmapOptions(t *testing.T, js string) map[string]interface{} {
	t.Helper()
	var opts map[string]interface{}
	if err := json.Unmarshal([]byte(`{"`+keyPortMap+`":`+js+`}`), &opts); err != nil {
		t.Fatal(err)
	}
	return opts
}

func TestParsePortMap(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	cases := []struct {
		name, js string
		def      netip.Addr
		want     []portRequest
		wantErr  string
	}{
		{"-p 8080:80", `[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]`, netip.Addr{},
			[]portRequest{{PortBinding{Proto: "tcp", HostPort: 8080, ContainerPort: 80}, 8080}}, ""},
		{"-p 127.0.0.1:53:53/udp", `[{"Proto":17,"Port":53,"HostIP":"127.0.0.1","HostPort":53}]`, netip.Addr{},
			[]portRequest{{PortBinding{Proto: "udp", HostIP: lo, HostPort: 53, ContainerPort: 53}, 53}}, ""},
		{"-P", `[{"Proto":6,"Port":80}]`, netip.Addr{},
			[]portRequest{{PortBinding{Proto: "tcp", ContainerPort: 80}, 0}}, ""},
		{"host_binding_ipv4 default", `[{"Proto":6,"Port":80,"HostPort":8080}]`, lo,
			[]portRequest{{PortBinding{Proto: "tcp", HostIP: lo, HostPort: 8080, ContainerPort: 80}, 8080}}, ""},
		{"0.0.0.0 means every address", `[{"Proto":6,"Port":80,"HostIP":"0.0.0.0","HostPort":8080}]`, lo,
			[]portRequest{{PortBinding{Proto: "tcp", HostPort: 8080, ContainerPort: 80}, 8080}}, ""},
		{"range", `[{"Proto":6,"Port":80,"HostPort":8000,"HostPortEnd":8010}]`, netip.Addr{},
			[]portRequest{{PortBinding{Proto: "tcp", HostPort: 8000, ContainerPort: 80}, 8010}}, ""},
		{"sctp", `[{"Proto":132,"Port":80}]`, netip.Addr{}, nil, "protocol 132 is not supported"},
		{"IPv6 host address", `[{"Proto":6,"Port":80,"HostIP":"::1","HostPort":80}]`, netip.Addr{}, nil, "only IPv4 host addresses"},
		{"bad host address", `[{"Proto":6,"Port":80,"HostIP":"nope","HostPort":80}]`, netip.Addr{}, nil, `bad host address "nope"`},
		{"port 0", `[{"Proto":6,"Port":0}]`, netip.Addr{}, nil, "container port 0/tcp"},
		{"not a list", `{"Proto":6}`, netip.Addr{}, nil, "malformed com.docker.network.portmap"},
		{"port out of range", `[{"Proto":6,"Port":70000}]`, netip.Addr{}, nil, "malformed com.docker.network.portmap"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parsePortMap(portmapOptions(t, c.js), c.def)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil || len(got) != len(c.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("binding %d: got %+v, want %+v", i, got[i], c.want[i])
				}
			}
		})
	}
	if got, err := parsePortMap(map[string]interface{}{}, netip.Addr{}); err != nil || got != nil {
		t.Fatalf("no portmap: %v, %v", got, err)
	}
}

func TestReserveIsAllOrNothing(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	// An ephemeral port, then the same port again: the second must fail
	// with the port named, and release the first.
	got, res, err := reserve([]portRequest{{PortBinding: PortBinding{Proto: "tcp", HostIP: lo, ContainerPort: 80}}})
	if err != nil || got[0].HostPort == 0 {
		t.Fatalf("ephemeral reserve: %+v, %v", got, err)
	}
	taken := got[0].HostPort
	again := portRequest{PortBinding: PortBinding{Proto: "tcp", HostIP: lo, HostPort: taken, ContainerPort: 80}, HostPortEnd: taken}
	other := portRequest{PortBinding: PortBinding{Proto: "udp", HostIP: lo, ContainerPort: 53}}
	if _, _, err := reserve([]portRequest{other, again}); err == nil || !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), got[0].hostAddr()) {
		t.Fatalf("second reserve of %d: %v", taken, err)
	}
	// A range skips the taken port.
	rng := portRequest{PortBinding: PortBinding{Proto: "tcp", HostIP: lo, HostPort: taken, ContainerPort: 80}, HostPortEnd: taken + 1}
	if taken < 65535 {
		b, r2, err := reserve([]portRequest{rng})
		switch {
		case err == nil && b[0].HostPort != taken+1:
			t.Fatalf("range reserve picked %d, want %d", b[0].HostPort, taken+1)
		case err == nil:
			r2.release()
		default:
			// Only acceptable if another program holds taken+1 too.
			next := portRequest{PortBinding: PortBinding{Proto: "tcp", HostIP: lo, HostPort: taken + 1, ContainerPort: 80}, HostPortEnd: taken + 1}
			if _, r3, err2 := reserve([]portRequest{next}); err2 == nil {
				r3.release()
				t.Fatalf("range %d-%d failed although %d is free: %v", taken, taken+1, taken+1, err)
			}
		}
	}
	res.release()
	if _, r3, err := reserve([]portRequest{again}); err != nil {
		t.Fatalf("port %d not free after release: %v", taken, err)
	} else {
		r3.release()
	}
}
