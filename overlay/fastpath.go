package overlay

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxbridge/vxbridge/kernel"
)

// The fast path: traffic between a local container and a remote one skips
// the bridge. With br_netfilter (which Docker needs), every frame a
// bridge forwards runs the host's netfilter hooks; Docker's swarm overlay
// escapes that with a bridge in a namespace of its own. Here tc does it:
// a frame a container sends to a remote endpoint's MAC is redirected from
// its veth straight to the VXLAN device, and a frame the tunnel brings
// for a local container's MAC straight to its veth. Everything else
// (ARP, which the device answers itself, traffic for the gateway, NAT,
// published ports) still crosses the bridge. The bridge path stays
// complete: a frame no filter matches is forwarded as before, so the
// filters only ever make traffic faster, never possible.
//
// It skips FORWARD too, so it is for networks whose containers may talk
// to each other (ICC): the driver gives no ports for the others.

// Local is a local endpoint of an overlay: its container's MAC and the
// host end of its veth.
type Local struct {
	MAC  net.HardwareAddr
	Link string
}

// redirect is one filter: frames for dst go out of the link with index to.
type redirect struct {
	dst mac
	to  int
}

// fastPath brings the filters of vni's ports and device (dev) in line with
// the peers the table holds.
func (o *Overlay) fastPath(vni uint32, dev *netlink.Vxlan) error {
	remote := []mac{}
	for _, p := range o.tab.peers(vni) {
		if p.vtep != local(dev) {
			remote = append(remote, p.mac)
		}
	}
	var in []redirect
	for _, p := range o.ports[vni] {
		link, err := o.nl.LinkByName(p.Link)
		if kernel.LinkNotFound(err) {
			continue // the endpoint is going: its filters go with its veth
		}
		if err != nil {
			return fmt.Errorf("fast path: %w", err)
		}
		out := make([]redirect, 0, len(remote))
		for _, m := range remote {
			out = append(out, redirect{dst: m, to: dev.Index})
		}
		if err := setRedirects(o.nl, link.Attrs().Index, out); err != nil {
			return fmt.Errorf("fast path on %s: %w", p.Link, err)
		}
		in = append(in, redirect{dst: mac(p.MAC), to: link.Attrs().Index})
	}
	if err := setRedirects(o.nl, dev.Index, in); err != nil {
		return fmt.Errorf("fast path on %s: %w", dev.Name, err)
	}
	return nil
}

// dropPorts clears the filters of the ports in old that are not in now.
func (o *Overlay) dropPorts(old, now []Local) error {
	for _, p := range old {
		if slices.ContainsFunc(now, func(q Local) bool { return q.Link == p.Link }) {
			continue
		}
		link, err := o.nl.LinkByName(p.Link)
		if kernel.LinkNotFound(err) {
			continue
		}
		if err == nil {
			err = setRedirects(o.nl, link.Attrs().Index, nil)
		}
		if err != nil {
			return fmt.Errorf("fast path off %s: %w", p.Link, err)
		}
	}
	return nil
}

// setRedirects makes want the ingress filters of the link with index idx
// (a clsact qdisc is added if it has none), adding and deleting only what
// differs: a new peer costs one filter per local container, not a rewrite.
func setRedirects(h *netlink.Handle, idx int, want []redirect) error {
	have, err := redirects(h, idx)
	if err != nil {
		return err
	}
	for r, handle := range have {
		if slices.Contains(want, r) {
			continue
		}
		attrs := ingressAttrs(idx)
		attrs.Handle = handle
		if err := h.FilterDel(&netlink.U32{FilterAttrs: attrs}); err != nil {
			return fmt.Errorf("delete tc filter for %s: %w", r.dst, err)
		}
	}
	if len(want) > 0 && len(have) == 0 {
		if err := h.QdiscAdd(clsact(idx)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add clsact qdisc: %w", err)
		}
	}
	for _, r := range want {
		if _, ok := have[r]; ok {
			continue
		}
		if err := h.FilterAdd(redirectFilter(idx, r)); err != nil {
			return fmt.Errorf("add tc filter for %s: %w", r.dst, err)
		}
	}
	return nil
}

// redirects lists the link's ingress redirects, as redirectFilter makes
// them, with their filter handles.
func redirects(h *netlink.Handle, idx int) (map[redirect]uint32, error) {
	link, err := h.LinkByIndex(idx)
	if err != nil {
		return nil, fmt.Errorf("link %d: %w", idx, err)
	}
	fs, err := h.FilterList(link, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return nil, fmt.Errorf("list tc filters of %s: %w", link.Attrs().Name, err)
	}
	out := map[redirect]uint32{}
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok || u.Sel == nil || len(u.Sel.Keys) != 2 || len(u.Actions) != 1 {
			continue // the hash table's own entry
		}
		a, ok := u.Actions[0].(*netlink.MirredAction)
		if !ok {
			continue
		}
		var m mac
		hi, lo := u.Sel.Keys[0].Val, u.Sel.Keys[1].Val
		m[0], m[1] = byte(hi>>8), byte(hi)
		m[2], m[3], m[4], m[5] = byte(lo>>24), byte(lo>>16), byte(lo>>8), byte(lo)
		out[redirect{dst: m, to: a.Ifindex}] = u.Handle
	}
	return out, nil
}

func ingressAttrs(idx int) netlink.FilterAttrs {
	return netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 1, Protocol: unix.ETH_P_ALL}
}

func clsact(idx int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

// redirectFilter matches the destination MAC (the 6 bytes before the
// network header, in two aligned words: u32 offsets count from there)
// and sends the frame out of r.to. u32, not flower: some kernels have only
// u32.
func redirectFilter(idx int, r redirect) *netlink.U32 {
	hi := uint32(r.dst[0])<<8 | uint32(r.dst[1])
	lo := uint32(r.dst[2])<<24 | uint32(r.dst[3])<<16 | uint32(r.dst[4])<<8 | uint32(r.dst[5])
	return &netlink.U32{
		FilterAttrs: ingressAttrs(idx),
		Sel: &netlink.TcU32Sel{
			Flags: netlink.TC_U32_TERMINAL,
			Keys: []netlink.TcU32Key{
				{Mask: 0x0000ffff, Val: hi, Off: -16},
				{Mask: 0xffffffff, Val: lo, Off: -12},
			},
		},
		Actions: []netlink.Action{netlink.NewMirredAction(r.to)}, // egress redirect
	}
}
