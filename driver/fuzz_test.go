package driver

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"testing"
)

// FuzzParseNetOptions feeds CreateNetwork's Options, as arbitrary JSON
// objects, to parseNetOptions. Nothing may panic, and whatever it accepts
// must be usable as is: a bridge name the kernel and iptables take, an MTU
// in range, and each -o option given honoured.
func FuzzParseNetOptions(f *testing.F) {
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"` + keyGeneric + `":{"` + optBridgeName + `":"br-web","` + optMTU + `":"1400"}}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		var opts map[string]interface{}
		if err := json.Unmarshal(data, &opts); err != nil || opts == nil {
			return // not a JSON object
		}
		o, err := parseNetOptions(id, opts)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("error without a message")
			}
			return
		}
		if n := len(o.Bridge); n < 1 || n > 15 || !bridgeNameRE.MatchString(o.Bridge) {
			t.Fatalf("bridge name %q accepted", o.Bridge)
		}
		if o.MTU < minMTU || o.MTU > maxMTU {
			t.Fatalf("MTU %d accepted", o.MTU)
		}
		if o.HostIPv4.IsValid() && (!o.HostIPv4.Is4() || o.HostIPv4.IsUnspecified()) {
			t.Fatalf("host binding address %s accepted", o.HostIPv4)
		}
		// Accepted means every -o key was known and taken.
		generic, _ := opts[keyGeneric].(map[string]interface{})
		want := bridgeName(id)
		if v, ok := generic[optBridgeName]; ok {
			want = v.(string)
		}
		if o.Bridge != want {
			t.Fatalf("bridge %q, want %q", o.Bridge, want)
		}
		wantMTU := defaultMTU
		if v, ok := generic[optMTU]; ok {
			wantMTU, _ = strconv.Atoi(v.(string))
		}
		if o.MTU != wantMTU {
			t.Fatalf("MTU %d, want %d", o.MTU, wantMTU)
		}
		// The same options give the same result (keys are read in order).
		if again, err := parseNetOptions(id, opts); err != nil || again != o {
			t.Fatalf("second parse: %+v, %v; first %+v", again, err, o)
		}
	})
}

// FuzzParsePortMap feeds arbitrary JSON as com.docker.network.portmap to
// parsePortMap. Nothing may panic, and every binding it accepts must be one
// reserve and iptables can program: tcp or udp, a real container port, a
// host range that is not reversed and a host address that is IPv4 or none.
func FuzzParsePortMap(f *testing.F) {
	f.Add([]byte(`[{"Proto":6,"Port":80,"HostPort":8080,"HostPortEnd":8080}]`))
	f.Add([]byte(`null`))

	f.Fuzz(func(t *testing.T, data []byte) {
		var raw interface{}
		if err := json.Unmarshal(data, &raw); err != nil {
			return
		}
		reqs, err := parsePortMap(map[string]interface{}{keyPortMap: raw}, netip.Addr{})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("error without a message")
			}
			return
		}
		if list, ok := raw.([]interface{}); ok && len(reqs) != len(list) {
			t.Fatalf("%d bindings from %d entries", len(reqs), len(list))
		}
		for _, r := range reqs {
			if r.Proto != "tcp" && r.Proto != "udp" {
				t.Fatalf("protocol %q accepted: %+v", r.Proto, r)
			}
			if r.ContainerPort == 0 {
				t.Fatalf("container port 0 accepted: %+v", r)
			}
			if r.HostPortEnd < r.HostPort {
				t.Fatalf("reversed host port range accepted: %+v", r)
			}
			if r.HostIP.IsValid() && (!r.HostIP.Is4() || r.HostIP.IsUnspecified()) {
				t.Fatalf("host address %s accepted: %+v", r.HostIP, r)
			}
		}
	})
}
