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
	veth := &netlink.Veth{LinkAttrs: la, PeerName: ep.PeerIf, PeerHardwareAddr: mac, PeerMTU: uint32(mtu)}
	// Enslaved as a step of its own: netlink's LinkAdd with a MasterIndex
	// leaves the pair behind when that fails (a bridge is full at 1023
	// ports), and a failed endpoint must leave nothing.
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", ep.HostIf, err)
	}
	if err := netlink.LinkSetMaster(veth, br); err != nil {
		deleteLink("veth", ep.HostIf)
		return fmt.Errorf("attach veth %s to bridge %s: %w", ep.HostIf, bridge, err)
	}
	// Hairpin lets a container reach its own published port through the
	// host address: DNAT sends the packet back out the port it came in by.
	if err := netlink.LinkSetHairpin(veth, true); err != nil {
		deleteLink("veth", ep.HostIf)
		return fmt.Errorf("set hairpin on veth %s: %w", ep.HostIf, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		deleteLink("veth", ep.HostIf)
		return fmt.Errorf("set veth %s up: %w", ep.HostIf, err)
	}
	return nil
}
