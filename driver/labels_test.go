package driver

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseNetOptions(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef"
	generic := func(kv ...string) map[string]interface{} {
		m := map[string]interface{}{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return map[string]interface{}{keyGeneric: m}
	}
	cases := []struct {
		name    string
		opts    map[string]interface{}
		want    netOptions
		wantErr string
	}{
		{"defaults", nil, netOptions{Bridge: "vxb-0123456789a", MTU: 1500, ICC: true, Masquerade: true}, ""},
		{"all set", map[string]interface{}{
			keyEnableIPv6: true, keyInternal: true,
			keyGeneric: map[string]interface{}{optBridgeName: "br-web", optMTU: "1400", optICC: "false", optMasquerade: "false", optHostIPv4: "127.0.0.1"},
		}, netOptions{Bridge: "br-web", MTU: 1400, ICC: false, Internal: true, IPv6: true, HostIPv4: netip.MustParseAddr("127.0.0.1")}, ""},
		{"host binding everywhere", generic(optHostIPv4, "0.0.0.0"), netOptions{Bridge: "vxb-0123456789a", MTU: 1500, ICC: true, Masquerade: true}, ""},
		{"host binding not IPv4", generic(optHostIPv4, "::1"), netOptions{}, "invalid com.docker.network.bridge.host_binding_ipv4"},
		{"masquerade not a bool", generic(optMasquerade, "yes please"), netOptions{}, "invalid com.docker.network.bridge.enable_ip_masquerade"},
		{"unknown key", generic("colour", "blue"), netOptions{}, `unknown option "colour"`},
		{"mtu too small", generic(optMTU, "67"), netOptions{}, `invalid com.docker.network.driver.mtu "67"`},
		{"mtu too big", generic(optMTU, "65536"), netOptions{}, "must be a number from 68 to 65535"},
		{"mtu not a number", generic(optMTU, "1e3"), netOptions{}, `"1e3"`},
		{"bridge name too long", generic(optBridgeName, "abcdefghijklmnop"), netOptions{}, "invalid com.docker.network.bridge.name"},
		{"bridge name with slash", generic(optBridgeName, "a/b"), netOptions{}, "invalid com.docker.network.bridge.name"},
		{"bridge name with space", generic(optBridgeName, "a b"), netOptions{}, "invalid com.docker.network.bridge.name"},
		{"icc not a bool", generic(optICC, "sometimes"), netOptions{}, "invalid com.docker.network.bridge.enable_icc"},
		{"generic not an object", map[string]interface{}{keyGeneric: "x"}, netOptions{}, "malformed com.docker.network.generic"},
		{"generic value not a string", map[string]interface{}{keyGeneric: map[string]interface{}{optMTU: 1400.0}}, netOptions{}, "want a string"},
		{"ipv6 flag wrong type", map[string]interface{}{keyEnableIPv6: 1.0}, netOptions{}, "malformed com.docker.network.enable_ipv6"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseNetOptions(id, c.opts)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
}

func TestKernelNamesFitIFNAMSIZ(t *testing.T) {
	id := strings.Repeat("f", 64)
	for _, n := range []string{bridgeName(id), vethName(id), peerName(id)} {
		if len(n) > 15 {
			t.Fatalf("%s is longer than 15 characters", n)
		}
	}
}
