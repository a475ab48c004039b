package ipam

import (
	"net/netip"
	"testing"
)

func TestFirstFree(t *testing.T) {
	v6 := []DefaultPool{{netip.MustParsePrefix("fd76:7862::/32"), 64}}
	tests := []struct {
		name     string
		defaults []DefaultPool
		used     []netip.Prefix
		want     string // "" = none left
	}{
		{"empty", defaultV4, nil, "172.17.0.0/16"},
		{"172.16 is not a candidate", defaultV4, prefixes("172.17.0.0/16"), "172.18.0.0/16"},
		{"blocker inside candidate", defaultV4, prefixes("172.17.3.4/32"), "172.18.0.0/16"},
		{"blocker covers several", defaultV4, prefixes("172.16.0.0/14"), "172.20.0.0/16"},
		{"blocker covers all", defaultV4, prefixes("172.0.0.0/8", "192.168.0.0/17"), "192.168.128.0/20"},
		{"all used", defaultV4, prefixes("128.0.0.0/1"), ""},
		{"other family ignored", defaultV4, prefixes("::/1"), "172.17.0.0/16"},
		// 2^31 candidates are skipped in one step, not enumerated.
		{"v6 half used", v6, prefixes("fd76:7862::/33"), "fd76:7862:8000::/64"},
		{"v6 all used", v6, prefixes("fd76:7862::/33", "fd76:7862:8000::/33"), ""},
		{"v6 last candidate", v6, prefixes("fd76:7862::/33", "fd76:7862:8000::/34", "fd76:7862:c000::/35",
			"fd76:7862:e000::/36", "fd76:7862:f000::/37", "fd76:7862:f800::/38", "fd76:7862:fc00::/39",
			"fd76:7862:fe00::/40", "fd76:7862:ff00::/41", "fd76:7862:ff80::/42", "fd76:7862:ffc0::/43",
			"fd76:7862:ffe0::/44", "fd76:7862:fff0::/45", "fd76:7862:fff8::/46", "fd76:7862:fffc::/47",
			"fd76:7862:fffe::/48", "fd76:7862:ffff::/49", "fd76:7862:ffff:8000::/50", "fd76:7862:ffff:c000::/51",
			"fd76:7862:ffff:e000::/52", "fd76:7862:ffff:f000::/53", "fd76:7862:ffff:f800::/54",
			"fd76:7862:ffff:fc00::/55", "fd76:7862:ffff:fe00::/56", "fd76:7862:ffff:ff00::/57",
			"fd76:7862:ffff:ff80::/58", "fd76:7862:ffff:ffc0::/59", "fd76:7862:ffff:ffe0::/60",
			"fd76:7862:ffff:fff0::/61", "fd76:7862:ffff:fff8::/62", "fd76:7862:ffff:fffc::/63",
			"fd76:7862:ffff:fffe::/64"), "fd76:7862:ffff:ffff::/64"},
		{"end of address space", []DefaultPool{{netip.MustParsePrefix("255.255.255.0/24"), 25}},
			prefixes("255.255.255.128/25", "255.255.255.0/25"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := firstFree(tc.defaults, tc.used)
			if tc.want == "" {
				if ok {
					t.Fatalf("got %s, want none", got)
				}
				return
			}
			if !ok || got.String() != tc.want {
				t.Fatalf("got %s (%v), want %s", got, ok, tc.want)
			}
		})
	}
}
