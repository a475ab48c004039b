package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// listEntries reads the entries on the VXLAN device idx that this package
// could have made: FDB entries with a remote address and permanent
// neighbour entries. The bridge's own entries for the port and the
// device's multicast addresses carry no remote address and are skipped.
func listEntries(h *netlink.Handle, idx int) (map[entry]bool, error) {
	have := map[entry]bool{}
	for _, family := range []int{unix.AF_BRIDGE, unix.AF_INET, unix.AF_INET6} {
		ns, err := neighList(h, idx, family)
		if err != nil {
			return nil, err
		}
		for _, n := range ns {
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok || len(n.HardwareAddr) != 6 || n.LinkIndex != idx {
				continue
			}
			e := entry{kind: Neighbour, mac: mac(n.HardwareAddr), ip: ip.Unmap()}
			if family == unix.AF_BRIDGE {
				e.kind = FDB
			} else if n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			have[e] = true
		}
	}
	return have, nil
}

// neighList dumps one family's entries of device idx, again if the dump
// was interrupted by a concurrent change.
func neighList(h *netlink.Handle, idx, family int) ([]netlink.Neigh, error) {
	var err error
	for range 3 {
		var ns []netlink.Neigh
		if ns, err = h.NeighList(idx, family); err == nil {
			return ns, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list %s entries: %w", familyName(family), err)
}

func familyName(family int) string {
	switch family {
	case unix.AF_BRIDGE:
		return "FDB"
	case unix.AF_INET:
		return "IPv4 neighbour"
	}
	return "IPv6 neighbour"
}

// neigh is the netlink form of e on device idx.
func neigh(idx int, e entry) *netlink.Neigh {
	n := &netlink.Neigh{
		LinkIndex:    idx,
		State:        netlink.NUD_PERMANENT,
		IP:           e.ip.AsSlice(),
		HardwareAddr: net.HardwareAddr(e.mac[:]),
	}
	if e.kind == FDB {
		n.Family = unix.AF_BRIDGE
		n.Flags = netlink.NTF_SELF
	}
	return n
}

// apply deletes then adds (replacing) entries on device idx, going on past
// a failure so one bad entry does not hold back the others.
func apply(h *netlink.Handle, idx int, del, add []entry) error {
	var errs []error
	for _, e := range del {
		if err := h.NeighDel(neigh(idx, e)); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete %s: %w", e.Entry(), err))
		}
	}
	for _, e := range add {
		if err := h.NeighSet(neigh(idx, e)); err != nil {
			errs = append(errs, fmt.Errorf("add %s: %w", e.Entry(), err))
		}
	}
	return errors.Join(errs...)
}
