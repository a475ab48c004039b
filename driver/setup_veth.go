package driver

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// createVeth makes the endpoint's veth pair: the host end enslaved to the
// bridge and up, the peer (which dockerd moves into the container and
// renames) with the endpoint's MAC and the network's MTU.
func createVeth(ep *Endpoint, bridge string, mtu int) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return fmt.Errorf("endpoint MAC %q: %w", ep.MAC, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = ep.HostIf
	la.MTU = mtu
	la.MasterIndex = br.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: la, PeerName: ep.PeerIf, PeerHardwareAddr: mac, PeerMTU: uint32(mtu)}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", ep.HostIf, err)
	}
	// Hairpin lets a container reach its own published port through the
	// host address: DNAT sends the packet back out the port it came in by.
	if err := netlink.LinkSetHairpin(veth, true); err != nil {
		deleteVeth(ep.HostIf)
		return fmt.Errorf("set hairpin on veth %s: %w", ep.HostIf, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		deleteVeth(ep.HostIf)
		return fmt.Errorf("set veth %s up: %w", ep.HostIf, err)
	}
	return nil
}

// deleteVeth removes the pair by its host end. A container whose namespace
// died took the pair with it, so "not found" is success.
func deleteVeth(name string) error {
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up veth %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete veth %s: %w", name, err)
	}
	return nil
}
