package overlay

import (
	"errors"
	"fmt"
	"maps"
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

// Redirect is a fast-path filter as Status reports it: frames arriving on
// Link for MAC go out of To.
type Redirect struct {
	Link string
	MAC  net.HardwareAddr
	To   string
}

func (r Redirect) String() string {
	return fmt.Sprintf("tc filter on %s: frames for %s to %s", r.Link, r.MAC, r.To)
}

// filterSet is the filters one link should have.
type filterSet struct {
	idx  int
	name string
	want []redirect
}

// wantedFilters is what the fast path of vni's ports and device (dev)
// should be, given the peers the table holds: the ports first, the
// device last.
func (o *Overlay) wantedFilters(vni uint32, dev *netlink.Vxlan) ([]filterSet, error) {
	remote := []mac{}
	for _, p := range o.tab.peers(vni) {
		if p.vtep != local(dev) {
			remote = append(remote, p.mac)
		}
	}
	var sets []filterSet
	in := filterSet{idx: dev.Index, name: dev.Name}
	for _, p := range o.ports[vni] {
		link, err := o.nl.LinkByName(p.Link)
		if kernel.LinkNotFound(err) {
			continue // the endpoint is going: its filters go with its veth
		}
		if err != nil {
			return nil, fmt.Errorf("fast path: %w", err)
		}
		out := filterSet{idx: link.Attrs().Index, name: p.Link}
		for _, m := range remote {
			out.want = append(out.want, redirect{dst: m, to: dev.Index})
		}
		sets = append(sets, out)
		in.want = append(in.want, redirect{dst: mac(p.MAC), to: out.idx})
	}
	return append(sets, in), nil
}

// fastPath brings the filters of vni's ports and device (dev) in line with
// the peers the table holds.
func (o *Overlay) fastPath(vni uint32, dev *netlink.Vxlan) error {
	sets, err := o.wantedFilters(vni, dev)
	if err != nil {
		return err
	}
	for _, set := range sets {
		err := setRedirects(o.nl, set.idx, set.want)
		if kernel.LinkNotFound(err) {
			continue // removed meanwhile (a container, or the network, going)
		}
		if err != nil {
			return fmt.Errorf("fast path on %s: %w", set.name, err)
		}
	}
	return nil
}

// checkFastPath lists the filters of vni's fast path that are wanted but
// absent (traffic takes the bridge, slower) and those present but not
// wanted (frames for that MAC go astray).
func (o *Overlay) checkFastPath(vni uint32, dev *netlink.Vxlan) (missing, stale []Redirect, err error) {
	sets, err := o.wantedFilters(vni, dev)
	if err != nil {
		return nil, nil, err
	}
	names := map[int]string{}
	for _, set := range sets {
		names[set.idx] = set.name
	}
	report := func(set filterSet, r redirect) Redirect {
		to := names[r.to]
		if to == "" {
			to = fmt.Sprintf("link %d", r.to)
		}
		return Redirect{Link: set.name, MAC: net.HardwareAddr(r.dst[:]), To: to}
	}
	for _, set := range sets {
		have, err := redirects(o.nl, set.idx)
		if kernel.LinkNotFound(err) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, nil, fmt.Errorf("fast path on %s: %w", set.name, err)
		}
		gone, absent := diffRedirects(have, set.want)
		for _, r := range absent {
			missing = append(missing, report(set, r))
		}
		for _, r := range slices.SortedFunc(maps.Keys(gone), compareRedirects) {
			stale = append(stale, report(set, r))
		}
	}
	return missing, stale, nil
}

func compareRedirects(a, b redirect) int {
	if c := slices.Compare(a.dst[:], b.dst[:]); c != 0 {
		return c
	}
	return a.to - b.to
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
	stale, missing := diffRedirects(have, want)
	for r, handle := range stale {
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
	for _, r := range missing {
		if err := h.FilterAdd(redirectFilter(idx, r)); err != nil {
			return fmt.Errorf("add tc filter for %s: %w", r.dst, err)
		}
	}
	return nil
}

// diffRedirects splits a link's filters (have, by handle) against want:
// those to delete and those to add.
func diffRedirects(have map[redirect]uint32, want []redirect) (stale map[redirect]uint32, missing []redirect) {
	stale = maps.Clone(have)
	for _, r := range want {
		if _, ok := have[r]; ok {
			delete(stale, r)
		} else {
			missing = append(missing, r)
		}
	}
	return stale, missing
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
