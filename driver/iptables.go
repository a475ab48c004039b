package driver

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// vxbridge's rules live in its own chains, jumped to from the built-in
// ones, so they never reorder or break Docker's chains and can be found and
// removed exactly. Every rule carries a comment naming its network (and
// endpoint), so a listing tells whose it is.
const (
	chainForward     = "VXBRIDGE-FORWARD"     // filter: what may cross our bridges
	chainIsolation1  = "VXBRIDGE-ISOLATION-1" // filter: crossing from or to one of our bridges…
	chainIsolation2  = "VXBRIDGE-ISOLATION-2" // filter: …leaving it for another of ours or Docker's: drop
	chainIsolation3  = "VXBRIDGE-ISOLATION-3" // filter: …entering it from one of Docker's bridges: drop
	chainDNAT        = "VXBRIDGE-DNAT"        // nat: published ports
	chainPostrouting = "VXBRIDGE-POSTROUTING" // nat: masquerade
	chainLoopback    = "VXBRIDGE-LOOPBACK"    // raw: what comes from our bridges for the host's 127.0.0.0/8: drop
	chainDNS         = "VXBRIDGE-DNS"         // nat: overlay containers' DNS queries to the plugin's resolver
	chainNotrack     = "VXBRIDGE-NOTRACK"     // raw: traffic between the neighbours of one bridge: not tracked
	dockerUser       = "DOCKER-USER"
)

type rule struct {
	table, chain string
	spec         []string
	family       family
}

// family is the IP versions a rule applies to (IPv6 only on networks with
// IPv6).
type family uint8

const (
	v4v6   family = iota
	v4only        // NAT and published ports are IPv4 only, as Docker's are
	v6only        // the rule names IPv6 addresses
)

// place says where a fixed rule goes in its chain.
type place int

const (
	appended  place = iota
	top             // first, after DOCKER-USER's jump in FORWARD
	beforeEnd       // last before DOCKER-USER's closing RETURN
)

// fixedRule is a rule every host has whatever networks exist: a built-in
// chain's entry into one of ours, or an isolation drop.
type fixedRule struct {
	rule
	at place
}

var chains = []struct{ table, name string }{
	{"filter", chainForward}, {"filter", chainIsolation1}, {"filter", chainIsolation2}, {"filter", chainIsolation3},
	{"nat", chainDNAT}, {"nat", chainPostrouting}, {"raw", chainLoopback}, {"nat", chainDNS},
	{"raw", chainNotrack},
}

// dockerBridges are the names of the bridges of Docker's own bridge driver
// (docker0 and br-<id>), which vxbridge networks are isolated from as
// Docker isolates its networks from each other.
var dockerBridges = []string{"docker0", "br-+"}

var fixed = slices.Concat([]fixedRule{
	{rule{"filter", "FORWARD", []string{"-j", chainForward}, v4v6}, top},
	{rule{"filter", chainForward, []string{"-j", chainIsolation1}, v4v6}, top},
	// dockerd inserts its own FORWARD rules (which accept all traffic
	// leaving its bridges) at the top whenever it starts or makes a
	// network, so the isolation drops must also be reached from
	// DOCKER-USER, which dockerd keeps first: Docker's documented place for
	// rules that load before its own. They go last there, so rules a user
	// inserts still win, as they do over Docker's own isolation.
	{rule{"filter", dockerUser, []string{"-j", chainIsolation1}, v4v6}, beforeEnd},
	// Addresses of the host itself, from outside (PREROUTING) and from the
	// host (OUTPUT, 127.0.0.1 included).
	{rule{"nat", "PREROUTING", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", chainDNAT}, v4only}, appended},
	{rule{"nat", "OUTPUT", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", chainDNAT}, v4only}, appended},
	{rule{"nat", "POSTROUTING", []string{"-j", chainPostrouting}, v4only}, top},
	// A published port is public, as with Docker: a connection DNATed to
	// it crosses isolation, both ways (conntrack marks both directions of
	// a DNATed connection). Returning from ISOLATION-2 and -3 only, not
	// from -1, leaves in force the drops -1 holds for internal networks.
	{rule{"filter", chainIsolation2, []string{"-m", "conntrack", "--ctstate", "DNAT", "-j", "RETURN"}, v4v6}, top},
	{rule{"filter", chainIsolation3, []string{"-m", "conntrack", "--ctstate", "DNAT", "-j", "RETURN"}, v4v6}, top},
	// Packets as they arrive, before any NAT: see networkRules. (Both
	// go on top, so the loopback jump, made second, comes first; the
	// order does not matter: CT --notrack does not end the chain.)
	{rule{"raw", "PREROUTING", []string{"-j", chainNotrack}, v4v6}, top},
	{rule{"raw", "PREROUTING", []string{"-j", chainLoopback}, v4only}, top},
	{rule{"nat", "PREROUTING", []string{"-j", chainDNS}, v4v6}, top},
}, dockerIsolation())

func dockerIsolation() []fixedRule {
	var rs []fixedRule
	for _, b := range dockerBridges {
		rs = append(rs,
			fixedRule{rule{"filter", chainIsolation2, []string{"-o", b, "-j", "DROP"}, v4v6}, appended},
			fixedRule{rule{"filter", chainIsolation3, []string{"-i", b, "-j", "DROP"}, v4v6}, appended})
	}
	return rs
}

// firewall programs IPv4 and IPv6 rules through the iptables binary, the
// same one (and so the same backend) Docker uses.
type firewall struct {
	v4, v6 *iptables.IPTables
}

func newFirewall() (*firewall, error) {
	v4, err := iptables.NewWithProtocol(iptables.ProtocolIPv4)
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	v6, err := iptables.NewWithProtocol(iptables.ProtocolIPv6)
	if err != nil {
		return nil, fmt.Errorf("ip6tables: %w", err)
	}
	return &firewall{v4: v4, v6: v6}, nil
}

// tables returns the iptables of the families a rule applies to, on a
// network with IPv6 or without.
func (f *firewall) tables(r rule, ipv6 bool) []*iptables.IPTables {
	var ts []*iptables.IPTables
	if r.family != v6only {
		ts = append(ts, f.v4)
	}
	if ipv6 && r.family != v4only {
		ts = append(ts, f.v6)
	}
	return ts
}

// setup makes vxbridge's chains (and DOCKER-USER, should dockerd not have
// made it yet) and its fixed rules; it is idempotent and runs at every
// start and repair, since a reboot or firewall reload may have removed them.
// The FORWARD jump goes right after Docker's DOCKER-USER jump, so rules
// users put there still come first, as Docker documents.
func (f *firewall) setup() error {
	for _, t := range []*iptables.IPTables{f.v4, f.v6} {
		for _, c := range append(chains, struct{ table, name string }{"filter", dockerUser}) {
			if ok, err := t.ChainExists(c.table, c.name); err != nil {
				return fmt.Errorf("check chain %s: %w", c.name, err)
			} else if !ok {
				if err := t.NewChain(c.table, c.name); err != nil {
					return fmt.Errorf("create chain %s: %w", c.name, err)
				}
			}
		}
	}
	for _, r := range fixed {
		for _, t := range f.tables(r.rule, true) {
			if ok, err := t.Exists(r.table, r.chain, r.spec...); err != nil {
				return fmt.Errorf("check rule in %s: %w", r.chain, err)
			} else if ok {
				continue
			}
			var err error
			switch r.at {
			case top:
				err = t.Insert(r.table, r.chain, firstPosition(t, r.table, r.chain), r.spec...)
			case beforeEnd:
				err = t.Insert(r.table, r.chain, endPosition(t, r.table, r.chain), r.spec...)
			default:
				err = t.Append(r.table, r.chain, r.spec...)
			}
			if err != nil {
				return fmt.Errorf("add rule to %s: %w", r.chain, err)
			}
		}
	}
	return nil
}

// firstPosition is 1, or right after DOCKER-USER's jump where there is one.
func firstPosition(t *iptables.IPTables, table, chain string) int {
	rules, err := t.List(table, chain)
	if err != nil {
		return 1
	}
	// rules[0] is the policy line, so a rule's index is its number.
	if i := slices.Index(rules, "-A "+chain+" -j "+dockerUser); i > 0 {
		return i + 1
	}
	return 1
}

// endPosition is the place of the chain's closing RETURN, or the end.
func endPosition(t *iptables.IPTables, table, chain string) int {
	rules, err := t.List(table, chain)
	if err != nil {
		return 1
	}
	// rules[0] is the -N line, so a rule's index is its number.
	if i := slices.Index(rules, "-A "+chain+" -j RETURN"); i > 0 {
		return i
	}
	return len(rules)
}

func tag(id string) []string {
	return []string{"-m", "comment", "--comment", "vxbridge:" + id}
}

func spec(parts ...[]string) []string { return slices.Concat(parts...) }

// networkRules is every rule one network owns.
func networkRules(n *Network) []rule {
	br := n.Options.Bridge
	t := tag(short(n.ID, 12))
	icc := "ACCEPT"
	if !n.Options.ICC {
		icc = "DROP"
	}
	rs := []rule{
		// ICC is decided in ISOLATION-1, the chain DOCKER-USER reaches: the
		// traffic between neighbours is most of what crosses a bridge, and
		// there it meets the fewest rules (none of Docker's chains, which
		// only concern its own bridges).
		{"filter", chainIsolation1, spec([]string{"-i", br, "-o", br}, t, []string{"-j", icc}), v4v6},
		// Isolation: traffic leaving this bridge for another vxbridge
		// bridge or one of Docker's is dropped in ISOLATION-2, traffic
		// entering it from one of Docker's in ISOLATION-3.
		{"filter", chainIsolation1, spec([]string{"-i", br, "!", "-o", br}, t, []string{"-j", chainIsolation2}), v4v6},
		{"filter", chainIsolation1, spec([]string{"!", "-i", br, "-o", br}, t, []string{"-j", chainIsolation3}), v4v6},
		{"filter", chainIsolation2, spec([]string{"-o", br}, t, []string{"-j", "DROP"}), v4v6},
		// The bridge has route_localnet (for ports published on
		// 127.0.0.1), which would let a neighbour with a route to
		// 127.0.0.1 through the gateway reach what the host serves on
		// loopback, and the ports published there (CVE-2020-8558). So
		// nothing that comes from the bridge for 127.0.0.0/8 goes on.
		// This is decided before NAT, so the answers of the host's own
		// connections to 127.0.0.1 ports (addressed to the gateway until
		// conntrack undoes the masquerade) pass. Internal networks get it
		// too: route_localnet may also be set host-wide.
		{"raw", chainLoopback, spec([]string{"-i", br, "-d", "127.0.0.0/8"}, t, []string{"-j", "DROP"}), v4only},
	}
	if n.Gateway4.IsValid() {
		rs = append(rs, notrackRules(br, t, n.Gateway4, v4only)...)
	}
	if n.Options.IPv6 && n.Gateway6.IsValid() {
		rs = append(rs, notrackRules(br, t, n.Gateway6, v6only)...)
	}
	if n.Options.Internal {
		// No way out and no way in, whatever else the host allows,
		// published ports of other networks included: in ISOLATION-1,
		// whose DNAT exemption (see fixed) does not apply to these.
		return append(rs,
			rule{"filter", chainIsolation1, spec([]string{"-i", br, "!", "-o", br}, t, []string{"-j", "DROP"}), v4v6},
			rule{"filter", chainIsolation1, spec([]string{"!", "-i", br, "-o", br}, t, []string{"-j", "DROP"}), v4v6},
		)
	}
	rs = append(rs,
		rule{"filter", chainForward, spec([]string{"-i", br, "!", "-o", br}, t, []string{"-j", "ACCEPT"}), v4v6},
		rule{"filter", chainForward, spec([]string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"}, t, []string{"-j", "ACCEPT"}), v4v6},
		// The host reaching a published port on 127.0.0.1: the container
		// must see a source it can answer.
		rule{"nat", chainPostrouting, spec([]string{"-o", br, "-m", "addrtype", "--src-type", "LOCAL"}, t, []string{"-j", "MASQUERADE"}), v4only},
	)
	if n.VNI != 0 {
		// Docker's embedded DNS sends the names it does not know to the
		// container's upstream servers from the container's namespace, so
		// through this bridge: the plugin's resolver answers the names of
		// the overlay's containers on other hosts and forwards the rest
		// (package names). The bridge has route_localnet; IPv6 has no such
		// thing, so IPv6 queries go to the resolver's own address.
		v6 := "[" + ResolverIPv6.String() + "]:53"
		for _, proto := range []string{"udp", "tcp"} {
			match := spec([]string{"-i", br, "-p", proto, "--dport", "53"}, t)
			rs = append(rs,
				rule{"nat", chainDNS, spec(match, []string{"-j", "DNAT", "--to-destination", ResolverAddr}), v4only},
				rule{"nat", chainDNS, spec(match, []string{"-j", "DNAT", "--to-destination", v6}), v6only})
		}
	}
	if n.Options.Masquerade && n.Gateway4.IsValid() {
		rs = append(rs, rule{"nat", chainPostrouting, spec([]string{"-s", n.Gateway4.Masked().String(), "!", "-o", br}, t, []string{"-j", "MASQUERADE"}), v4only})
	}
	return rs
}

// notrackRules exempt the traffic between the neighbours of one bridge
// (its veths and, on an overlay, its VXLAN port) from conntrack, on every
// vxbridge network. That traffic is bridged, but br_netfilter (which
// Docker needs) still sends each frame through conntrack, the host-wide
// table of every connection; bypassing it is what makes an overlay as
// fast as Docker's, whose bridges sit in their own namespaces. Nothing
// that traffic meets needs a connection state: ICC is decided by
// interface, and NAT only ever applies to what crosses the gateway. So:
// to the subnet, not tracked; to the gateway itself (routed, perhaps
// DNATed to a published port) tracked as before. Answers of a connection
// DNATed to a neighbour are exempted per published port (portRules).
// The exemptions (RETURN) go first in the chain: see rule.first.
func notrackRules(br string, t []string, gw netip.Prefix, fam family) []rule {
	return []rule{
		{"raw", chainNotrack, spec([]string{"-i", br, "-d", gw.Addr().String()}, t, []string{"-j", "RETURN"}), fam},
		{"raw", chainNotrack, spec([]string{"-i", br, "-d", gw.Masked().String()}, t, []string{"-j", "CT", "--notrack"}), fam},
	}
}

// portRules is every rule one published port owns: DNAT to the container,
// FORWARD accept into the bridge, masquerade for hairpin traffic (a
// container reaching its own published port through the host address),
// and the container's answers kept tracked: a neighbour reaching the port
// through a host address is DNATed to the container, which answers it
// straight over the bridge, and only conntrack can undo the DNAT.
func portRules(n *Network, ep *Endpoint, b PortBinding) []rule {
	br := n.Options.Bridge
	t := tag(short(n.ID, 12) + ":" + short(ep.ID, 12))
	cip := ep.Addr4.Addr().String()
	cport := fmt.Sprint(b.ContainerPort)
	dst := []string{"-p", b.Proto}
	if b.HostIP.IsValid() {
		dst = append(dst, "-d", b.HostIP.String())
	}
	return []rule{
		{"nat", chainDNAT, spec(dst, []string{"--dport", fmt.Sprint(b.HostPort)}, t, []string{"-j", "DNAT", "--to-destination", cip + ":" + cport}), v4only},
		{"filter", chainForward, spec([]string{"-d", cip, "!", "-i", br, "-o", br, "-p", b.Proto, "--dport", cport}, t, []string{"-j", "ACCEPT"}), v4only},
		{"nat", chainPostrouting, spec([]string{"-s", cip, "-d", cip, "-p", b.Proto, "--dport", cport}, t, []string{"-j", "MASQUERADE"}), v4only},
		{"raw", chainNotrack, spec([]string{"-i", br, "-s", cip, "-p", b.Proto, "--sport", cport}, t, []string{"-j", "RETURN"}), v4only},
	}
}

// legacyRules are rules an earlier version gave a network and this one
// does not: the ICC rule and an internal network's drops lived in
// VXBRIDGE-FORWARD. Repair removes them, else the chains' counts never
// match and every pass re-asserts everything.
func legacyRules(n *Network) []rule {
	br, t := n.Options.Bridge, tag(short(n.ID, 12))
	rs := []rule{
		{"filter", chainForward, spec([]string{"-i", br, "-o", br}, t, []string{"-j", "ACCEPT"}), v4v6},
		{"filter", chainForward, spec([]string{"-i", br, "-o", br}, t, []string{"-j", "DROP"}), v4v6},
	}
	if !n.Options.Internal {
		return rs
	}
	return append(rs,
		rule{"filter", chainForward, spec([]string{"-i", br, "!", "-o", br}, t, []string{"-j", "DROP"}), v4v6},
		rule{"filter", chainForward, spec([]string{"!", "-i", br, "-o", br}, t, []string{"-j", "DROP"}), v4v6},
	)
}

// ruleSet is rules of one owner, with whether they apply to IPv6 too.
type ruleSet struct {
	rules []rule
	ipv6  bool
}

// listing is one `iptables -S` of each of vxbridge's chains, in both
// families.
type listing []listedChain

type listedChain struct {
	t            *iptables.IPTables
	table, chain string
	rules        []string
}

// list lists vxbridge's chains: two dozen iptables runs, slow under load,
// so Repair lists before it takes the driver's lock.
func (f *firewall) list() (listing, error) {
	var l listing
	for _, t := range []*iptables.IPTables{f.v4, f.v6} {
		for _, c := range chains {
			rules, err := t.List(c.table, c.name)
			if err != nil {
				return nil, fmt.Errorf("list chain %s: %w", c.name, err)
			}
			l = append(l, listedChain{t, c.table, c.name, rules})
		}
	}
	return l, nil
}

// intact reports whether the listed chains hold exactly as many rules of
// the tags in tags as want, per family and chain: a flush or a lost rule
// shows as a shortfall, for one listing per chain instead of a check per
// rule.
func (f *firewall) intact(l listing, want []ruleSet, tags map[string]bool) bool {
	type key struct {
		t     *iptables.IPTables
		chain string
	}
	expected := map[key]int{}
	for _, rs := range want {
		for _, r := range rs.rules {
			for _, t := range f.tables(r, rs.ipv6) {
				expected[key{t, r.chain}]++
			}
		}
	}
	for _, c := range l {
		n := 0
		for _, r := range c.rules {
			if tag, ok := ruleTag(r); ok && tags[tag] {
				n++
			}
		}
		if n != expected[key{c.t, c.chain}] {
			return false
		}
	}
	return true
}

// ensure adds the rules that are missing; existing ones stay in place.
func (f *firewall) ensure(rs []rule, ipv6 bool) error {
	for _, r := range rs {
		for _, t := range f.tables(r, ipv6) {
			add := t.AppendUnique
			if r.first() {
				add = func(table, chain string, spec ...string) error { return t.InsertUnique(table, chain, 1, spec...) }
			}
			if err := add(r.table, r.chain, r.spec...); err != nil {
				return fmt.Errorf("add rule to %s: %w", r.chain, err)
			}
		}
	}
	return nil
}

// missing returns the rules of rs that are not in place.
func (f *firewall) missing(rs []rule, ipv6 bool) ([]rule, error) {
	var out []rule
	for _, r := range rs {
		for _, t := range f.tables(r, ipv6) {
			ok, err := t.Exists(r.table, r.chain, r.spec...)
			if err != nil {
				return nil, fmt.Errorf("check rule in %s: %w", r.chain, err)
			}
			if !ok {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// first reports whether r goes at the top of its chain rather than the
// end: in VXBRIDGE-NOTRACK the exemptions (RETURN) come before every
// CT --notrack rule, whatever order networks, ports and repairs add them in.
func (r rule) first() bool {
	return r.chain == chainNotrack && r.spec[len(r.spec)-1] == "RETURN"
}

func (r rule) String() string {
	return fmt.Sprintf("-t %s -A %s %s", r.table, r.chain, strings.Join(r.spec, " "))
}

// remove deletes the rules; absent ones are fine.
func (f *firewall) remove(rs []rule, ipv6 bool) error {
	for _, r := range rs {
		for _, t := range f.tables(r, ipv6) {
			if err := t.DeleteIfExists(r.table, r.chain, r.spec...); err != nil {
				return fmt.Errorf("delete rule from %s: %w", r.chain, err)
			}
		}
	}
	return nil
}

// removeOrphans deletes the listed tagged rules whose tag is not live
// (the tags of recorded networks and of endpoints with published ports),
// and returns how many it deleted. The listing may be older than live: a
// rule already gone is skipped.
func (f *firewall) removeOrphans(l listing, live map[string]bool) (int, error) {
	n := 0
	for _, c := range l {
		for _, r := range c.rules {
			tag, ok := ruleTag(r)
			if !ok || live[tag] {
				continue
			}
			// Our comments hold no spaces, so the listing splits back
			// into the rule's arguments once the quotes are gone.
			args := strings.Fields(strings.ReplaceAll(r, `"`, ""))[2:]
			if ok, err := c.t.Exists(c.table, c.chain, args...); err != nil {
				return n, fmt.Errorf("check orphan rule %q: %w", r, err)
			} else if !ok {
				continue
			}
			if err := c.t.Delete(c.table, c.chain, args...); err != nil {
				return n, fmt.Errorf("delete orphan rule %q: %w", r, err)
			}
			n++
		}
	}
	return n, nil
}

// ruleTag extracts the vxbridge tag from one `iptables -S` line.
func ruleTag(line string) (string, bool) {
	_, rest, ok := strings.Cut(line, `--comment "vxbridge:`)
	if !ok {
		return "", false
	}
	tag, _, ok := strings.Cut(rest, `"`)
	return tag, ok
}

// publishedPorts reads back the bindings of one endpoint's tagged DNAT
// rules, as portRules wrote them.
func (f *firewall) publishedPorts(tag string) ([]PortBinding, error) {
	rules, err := f.v4.List("nat", chainDNAT)
	if err != nil {
		return nil, fmt.Errorf("list chain %s: %w", chainDNAT, err)
	}
	var out []PortBinding
	for _, r := range rules {
		if t, ok := ruleTag(r); !ok || t != tag {
			continue
		}
		b, err := parseDNATRule(r)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// parseDNATRule reads one `iptables -S` line of portRules' DNAT rule:
// "-A VXBRIDGE-DNAT [-d HOST/32] -p PROTO -m PROTO --dport HP … -j DNAT --to-destination CIP:CP".
func parseDNATRule(line string) (PortBinding, error) {
	var b PortBinding
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		var err error
		switch f[i] {
		case "-d":
			var p netip.Prefix
			if p, err = netip.ParsePrefix(f[i+1]); err == nil {
				b.HostIP = p.Addr()
			}
		case "-p":
			b.Proto = f[i+1]
		case "--dport":
			var p uint64
			p, err = strconv.ParseUint(f[i+1], 10, 16)
			b.HostPort = uint16(p)
		case "--to-destination":
			var ap netip.AddrPort
			ap, err = netip.ParseAddrPort(f[i+1])
			b.ContainerPort = ap.Port()
		}
		if err != nil {
			return b, fmt.Errorf("read published port from rule %q: %w", line, err)
		}
	}
	if b.Proto == "" || b.HostPort == 0 || b.ContainerPort == 0 {
		return b, fmt.Errorf("read published port from rule %q: incomplete", line)
	}
	return b, nil
}
