package driver

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/vxbridge/vxbridge/kernel"
)

// Adoption rebuilds records the driver lost (a state file deleted,
// truncated or replaced) from what dockerd and the kernel still hold, so a
// lost record never makes the plugin delete a network dockerd still uses.

// NetworkInfo is what dockerd shows of one of the plugin's networks.
type NetworkInfo struct {
	ID       string
	Options  map[string]string // the network's -o options
	Internal bool
	IPv6     bool
	// Subnets and gateways per family; a gateway dockerd does not show
	// (a --subnet without --gateway) is zero.
	Subnet4, Subnet6   netip.Prefix
	Gateway4, Gateway6 netip.Addr
}

// AdoptNetwork records a network dockerd has and the driver has no record
// of, and reports whether it did. Its gateway is dockerd's, else the
// address its bridge carries, else the first address of the subnet (what
// vxbridge's IPAM hands out); the next Repair builds what is missing.
func (d *Driver) AdoptNetwork(info NetworkInfo) (bool, error) {
	if err := checkIDs(info.ID); err != nil {
		return false, err
	}
	generic := map[string]interface{}{}
	for k, v := range info.Options {
		generic[k] = v
	}
	opts, err := parseNetOptions(info.ID, map[string]interface{}{keyGeneric: generic, keyInternal: info.Internal, keyEnableIPv6: info.IPv6})
	if err != nil {
		return false, fmt.Errorf("adopt network %s: %w", short(info.ID, 12), err)
	}
	n := &Network{ID: info.ID, Options: opts}
	if n.Gateway4, err = adoptedGateway(opts.Bridge, info.Subnet4, info.Gateway4); err != nil {
		return false, fmt.Errorf("adopt network %s: %w", short(info.ID, 12), err)
	}
	if opts.IPv6 {
		if n.Gateway6, err = adoptedGateway(opts.Bridge, info.Subnet6, info.Gateway6); err != nil {
			return false, fmt.Errorf("adopt network %s: %w", short(info.ID, 12), err)
		}
	}
	if opts.Overlay != "" {
		// An overlay's VNI is the cluster's.
		if d.cluster == nil {
			return false, fmt.Errorf("adopt network %s: %w", short(info.ID, 12), errNoCluster)
		}
		def, err := d.cluster.Lookup(opts.Overlay)
		if err != nil {
			return false, fmt.Errorf("adopt network %s: %w", short(info.ID, 12), err)
		}
		n.VNI = def.VNI
	}
	defer d.lockNetwork(n.ID, true)()
	if _, err := load[Network](d.store, networkKey(n.ID)); err == nil {
		return false, nil
	}
	if err := create(d.store, networkKey(n.ID), n); err != nil {
		return false, fmt.Errorf("record adopted network %s: %w", short(n.ID, 12), err)
	}
	d.log.Warn("adopted a network dockerd has but vxbridge had no record of", "network", short(n.ID, 12), "bridge", opts.Bridge, "gateway", n.Gateway4, "gateway6", n.Gateway6)
	return true, nil
}

func adoptedGateway(bridge string, subnet netip.Prefix, gw netip.Addr) (netip.Prefix, error) {
	if !subnet.IsValid() {
		return netip.Prefix{}, errors.New("dockerd shows no subnet")
	}
	subnet = subnet.Masked()
	if gw.IsValid() {
		return netip.PrefixFrom(gw, subnet.Bits()), nil
	}
	if link, err := netlink.LinkByName(bridge); err == nil {
		if addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL); err == nil {
			for _, a := range addrs {
				if p, ok := kernel.Prefix(a.IPNet); ok && p.Masked() == subnet {
					return p, nil
				}
			}
		}
	}
	return netip.PrefixFrom(subnet.Addr().Next(), subnet.Bits()), nil
}

// AdoptEndpoint records an endpoint dockerd has on a recorded network when
// its veth still exists (a container that kept running), and reports
// whether it did. Its published ports are read back from its tagged DNAT
// rules, which carry exactly what was programmed (the host ports -P chose
// included).
func (d *Driver) AdoptEndpoint(networkID, endpointID, mac string, addr4, addr6 netip.Prefix) (bool, error) {
	if err := checkIDs(networkID, endpointID); err != nil {
		return false, err
	}
	defer d.lockNetwork(networkID, false)()
	n, err := load[Network](d.store, networkKey(networkID))
	if err != nil {
		return false, fmt.Errorf("adopt endpoint %s: network %s: %w", short(endpointID, 12), short(networkID, 12), err)
	}
	ep := &Endpoint{ID: endpointID, NetworkID: n.ID, HostIf: vethName(endpointID), PeerIf: peerName(endpointID), MAC: mac, Addr4: addr4, Addr6: addr6}
	if _, err := load[Endpoint](d.store, endpointKey(n.ID, ep.ID)); err == nil || !linkExists(ep.HostIf) {
		return false, nil
	}
	if ep.Ports, err = d.fw.publishedPorts(short(n.ID, 12) + ":" + short(ep.ID, 12)); err != nil {
		return false, fmt.Errorf("adopt endpoint %s: %w", short(ep.ID, 12), err)
	}
	if err := create(d.store, endpointKey(n.ID, ep.ID), ep); err != nil {
		return false, fmt.Errorf("record adopted endpoint %s: %w", short(ep.ID, 12), err)
	}
	d.log.Warn("adopted an endpoint dockerd has but vxbridge had no record of", "network", short(n.ID, 12), "endpoint", short(ep.ID, 12), "addr", addr4, "ports", len(ep.Ports))
	return true, nil
}
