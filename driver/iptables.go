package driver

import (
	"fmt"
	"slices"

	"github.com/coreos/go-iptables/iptables"
)

// vxbridge's rules live in its own chains, jumped to from the built-in
// ones, so they never reorder or break Docker's chains and can be found and
// removed exactly.
const (
	chainForward = "VXBRIDGE-FORWARD"
	dockerUser   = "DOCKER-USER"
)

type rule struct {
	table, chain string
	spec         []string
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

func (f *firewall) tables(ipv6 bool) []*iptables.IPTables {
	if ipv6 {
		return []*iptables.IPTables{f.v4, f.v6}
	}
	return []*iptables.IPTables{f.v4}
}

// setup makes vxbridge's chains and the jumps to them. The FORWARD jump
// goes right after Docker's DOCKER-USER jump, so rules users put there
// still come first, as Docker documents.
func (f *firewall) setup() error {
	for _, t := range f.tables(true) {
		exists, err := t.ChainExists("filter", chainForward)
		if err != nil {
			return fmt.Errorf("check chain %s: %w", chainForward, err)
		}
		if !exists {
			if err := t.NewChain("filter", chainForward); err != nil {
				return fmt.Errorf("create chain %s: %w", chainForward, err)
			}
		}
		jump := []string{"-j", chainForward}
		if ok, err := t.Exists("filter", "FORWARD", jump...); err != nil {
			return fmt.Errorf("check jump to %s: %w", chainForward, err)
		} else if ok {
			continue
		}
		pos := 1
		if rules, err := t.List("filter", "FORWARD"); err == nil {
			// rules[0] is the policy line; rule numbers start at 1.
			if i := slices.Index(rules, "-A FORWARD -j "+dockerUser); i > 0 {
				pos = i + 1
			}
		}
		if err := t.Insert("filter", "FORWARD", pos, jump...); err != nil {
			return fmt.Errorf("insert jump to %s: %w", chainForward, err)
		}
	}
	return nil
}

// networkRules is every rule one network owns, tagged with its ID so a
// listing tells whose rule it is.
func networkRules(n *Network) []rule {
	br := n.Options.Bridge
	tag := []string{"-m", "comment", "--comment", "vxbridge:" + short(n.ID, 12)}
	icc := "ACCEPT"
	if !n.Options.ICC {
		icc = "DROP"
	}
	return []rule{
		{"filter", chainForward, append([]string{"-i", br, "-o", br}, append(tag, "-j", icc)...)},
	}
}

// ensure adds the rules that are missing; existing ones stay in place.
func (f *firewall) ensure(n *Network) error {
	for _, t := range f.tables(n.Options.IPv6) {
		for _, r := range networkRules(n) {
			if err := t.AppendUnique(r.table, r.chain, r.spec...); err != nil {
				return fmt.Errorf("add rule to %s for network %s: %w", r.chain, short(n.ID, 12), err)
			}
		}
	}
	return nil
}

// remove deletes the network's rules; absent ones are fine.
func (f *firewall) remove(n *Network) error {
	for _, t := range f.tables(n.Options.IPv6) {
		for _, r := range networkRules(n) {
			if err := t.DeleteIfExists(r.table, r.chain, r.spec...); err != nil {
				return fmt.Errorf("delete rule from %s for network %s: %w", r.chain, short(n.ID, 12), err)
			}
		}
	}
	return nil
}
