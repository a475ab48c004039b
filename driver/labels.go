package driver

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Option keys understood in `docker network create -o KEY=VALUE`. They are
// Docker's own bridge-driver keys, so users can switch drivers without
// relearning them.
const (
	optBridgeName = "com.docker.network.bridge.name"
	optMTU        = "com.docker.network.driver.mtu"
	optICC        = "com.docker.network.bridge.enable_icc"
	optMasquerade = "com.docker.network.bridge.enable_ip_masquerade"
	optHostIPv4   = "com.docker.network.bridge.host_binding_ipv4"
	// OptOverlay makes the network an overlay spanning every host of the
	// cluster; its value is the network's name on every host.
	OptOverlay = "vxbridge.overlay"
	// optVNI picks the overlay's VXLAN network identifier (default: the
	// lowest free one from 4096).
	optVNI = "vxbridge.vni"
)

var knownOptions = []string{optBridgeName, optMTU, optICC, optMasquerade, optHostIPv4, OptOverlay, optVNI}

// overlayNameRE is what Docker accepts as a network name.
var overlayNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

// Top-level keys dockerd sets in CreateNetwork's Options.
const (
	keyGeneric    = "com.docker.network.generic"
	keyEnableIPv6 = "com.docker.network.enable_ipv6"
	keyInternal   = "com.docker.network.internal"
)

const (
	defaultMTU   = 1500
	minMTU       = 68
	maxMTU       = 65535
	bridgePrefix = "vxb-"
	vethPrefix   = "vxv"
	peerPrefix   = "vxc"
)

// bridgeNameRE is what the kernel accepts as an interface name, minus the
// characters that make trouble in iptables rules and shells.
var bridgeNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$`)

// netOptions is what a user can choose for one network.
type netOptions struct {
	Bridge     string
	MTU        int
	ICC        bool
	Masquerade bool
	// HostIPv4 is where -p without an address publishes; unset means every
	// address of the host.
	HostIPv4 netip.Addr `json:",omitempty"`
	Internal bool
	IPv6     bool
	// Overlay is the cluster-wide name of an overlay network ("" for a
	// network of this host only); VNI the VXLAN ID asked for (0: any).
	Overlay string `json:",omitempty"`
	VNI     uint32 `json:",omitempty"`
}

// parseNetOptions reads CreateNetwork's Options. Unknown -o keys are
// refused, naming the key, so a typo never silently falls back to a default.
func parseNetOptions(networkID string, opts map[string]interface{}) (netOptions, error) {
	o := netOptions{Bridge: bridgeName(networkID), MTU: defaultMTU, ICC: true, Masquerade: true}
	var err error
	if o.IPv6, err = boolOption(opts, keyEnableIPv6); err != nil {
		return o, err
	}
	if o.Internal, err = boolOption(opts, keyInternal); err != nil {
		return o, err
	}
	generic, err := genericOptions(opts[keyGeneric])
	if err != nil {
		return o, err
	}
	keys := make([]string, 0, len(generic))
	for k := range generic {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same first bad key every time
	for _, k := range keys {
		v := generic[k]
		switch k {
		case optBridgeName:
			if !bridgeNameRE.MatchString(v) {
				return o, fmt.Errorf("invalid %s %q: 1 to 15 letters, digits, '_', '.' or '-'", k, v)
			}
			o.Bridge = v
		case optMTU:
			mtu, err := strconv.Atoi(v)
			if err != nil || mtu < minMTU || mtu > maxMTU {
				return o, fmt.Errorf("invalid %s %q: must be a number from %d to %d", k, v, minMTU, maxMTU)
			}
			o.MTU = mtu
		case optICC, optMasquerade:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, fmt.Errorf("invalid %s %q: must be true or false", k, v)
			}
			if k == optICC {
				o.ICC = b
			} else {
				o.Masquerade = b
			}
		case optHostIPv4:
			ip, err := netip.ParseAddr(v)
			if err != nil || !ip.Is4() {
				return o, fmt.Errorf("invalid %s %q: must be an IPv4 address", k, v)
			}
			if !ip.IsUnspecified() {
				o.HostIPv4 = ip
			}
		case OptOverlay:
			if !overlayNameRE.MatchString(v) {
				return o, fmt.Errorf("invalid %s %q: a network name (letters, digits, '_', '.', '-')", k, v)
			}
			o.Overlay = v
		case optVNI:
			vni, err := strconv.ParseUint(v, 10, 32)
			if err != nil || vni < 1 || vni > 1<<24-1 {
				return o, fmt.Errorf("invalid %s %q: must be a number from 1 to %d", k, v, 1<<24-1)
			}
			o.VNI = uint32(vni)
		default:
			return o, fmt.Errorf("unknown option %q (known: %s)", k, strings.Join(knownOptions, ", "))
		}
	}
	if o.VNI != 0 && o.Overlay == "" {
		return o, fmt.Errorf("%s needs %s", optVNI, OptOverlay)
	}
	return o, nil
}

// genericOptions accepts the `-o` map as dockerd sends it (JSON object of
// strings); anything else is a malformed request.
func genericOptions(v interface{}) (map[string]string, error) {
	out := map[string]string{}
	if v == nil {
		return out, nil
	}
	m, ok := v.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("malformed %s: want an object, got %T", keyGeneric, v)
	}
	for k, val := range m {
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("malformed option %q: want a string, got %T", k, val)
		}
		out[k] = s
	}
	return out, nil
}

func boolOption(opts map[string]interface{}, key string) (bool, error) {
	switch v := opts[key].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string: // tolerate "true"/"false" from older daemons
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("malformed %s %q: %w", key, v, err)
		}
		return b, nil
	default:
		return false, fmt.Errorf("malformed %s: want a bool, got %T", key, v)
	}
}

// checkIDs refuses network and endpoint IDs that are not Docker's 64
// lowercase hex characters: kernel names, rule tags and record keys derive
// from them, and dockerd never sends another, but the socket is an API.
func checkIDs(networkID string, endpointID ...string) error {
	if !isDockerID(networkID) {
		return fmt.Errorf("malformed network ID %q: want 64 hex characters", networkID)
	}
	for _, id := range endpointID {
		if !isDockerID(id) {
			return fmt.Errorf("malformed endpoint ID %q: want 64 hex characters", id)
		}
	}
	return nil
}

func isDockerID(id string) bool {
	if len(id) != 64 {
		return false
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// BridgeName is the bridge of a network with these -o options.
func BridgeName(networkID string, options map[string]string) string {
	if b := options[optBridgeName]; b != "" {
		return b
	}
	return bridgeName(networkID)
}

// Kernel names derive from Docker's IDs: 64 hex characters, cut to fit
// IFNAMSIZ (15 usable characters).
func bridgeName(networkID string) string { return bridgePrefix + short(networkID, 11) }
func vethName(endpointID string) string  { return vethPrefix + short(endpointID, 12) }
func peerName(endpointID string) string  { return peerPrefix + short(endpointID, 12) }

func short(id string, n int) string {
	if len(id) > n {
		return id[:n]
	}
	return id
}
