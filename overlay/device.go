package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxbridge/vxbridge/kernel"
)

const (
	// DevicePrefix starts the name of every VXLAN device this package
	// makes ("vxo-<vni>"), so an orphan clean-up can recognise its own.
	DevicePrefix = "vxo-"
	// Port is the IANA VXLAN port every device sends to and listens on.
	Port = 4789
	// MaxVNI is the largest VXLAN network identifier (24 bits).
	MaxVNI = 1<<24 - 1
)

// Device is the VXLAN device of one overlay on this host.
type Device struct {
	VNI    uint32     // 1..MaxVNI
	Local  netip.Addr // this host's VTEP (underlay) address; must be one of its addresses
	MTU    int        // of the VXLAN device: the underlay's MTU minus 50 (IPv4) or 70 (IPv6)
	Bridge string     // the existing bridge the device becomes a port of
}

// DeviceName is the name of the VXLAN device of vni (at most 12 characters).
func DeviceName(vni uint32) string {
	return DevicePrefix + strconv.FormatUint(uint64(vni), 10)
}

// ParseDeviceName returns the VNI of a name DeviceName made.
func ParseDeviceName(name string) (uint32, bool) {
	s, ok := strings.CutPrefix(name, DevicePrefix)
	if !ok || s == "" || s[0] == '0' {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > MaxVNI {
		return 0, false
	}
	return uint32(n), true
}

func checkVNI(vni uint32) error {
	if vni == 0 || vni > MaxVNI {
		return fmt.Errorf("VNI %d is out of range 1-%d", vni, MaxVNI)
	}
	return nil
}

func (d Device) check() error {
	if err := checkVNI(d.VNI); err != nil {
		return err
	}
	if !d.Local.IsValid() || d.Local.IsUnspecified() || d.Local.IsMulticast() {
		return fmt.Errorf("local VTEP address %q of VNI %d is not a unicast address", d.Local, d.VNI)
	}
	if d.MTU < 68 || d.MTU > 65535 {
		return fmt.Errorf("MTU %d of VNI %d is out of range 68-65535", d.MTU, d.VNI)
	}
	if d.Bridge == "" {
		return fmt.Errorf("no bridge given for VNI %d", d.VNI)
	}
	return nil
}

// link is the VXLAN link d describes: learning off (the control plane
// programs every MAC), proxy on (the device answers ARP and neighbour
// solicitations from its neighbour table, so none crosses the tunnel), no
// miss notifications (nothing listens for them) and no default
// destination, so broadcasts and unknown MACs are dropped, never flooded.
func (d Device) link() *netlink.Vxlan {
	la := netlink.NewLinkAttrs()
	la.Name = DeviceName(d.VNI)
	la.MTU = d.MTU
	return &netlink.Vxlan{
		LinkAttrs: la,
		VxlanId:   int(d.VNI),
		SrcAddr:   d.Local.AsSlice(),
		Port:      Port,
		Proxy:     true,
	}
}

// differs names the first setting of an existing device that d would
// set otherwise and that needs the device re-created; "" if none.
func (d Device) differs(v *netlink.Vxlan) string {
	local, _ := netip.AddrFromSlice(v.SrcAddr)
	switch {
	case local.Unmap() != d.Local:
		return fmt.Sprintf("local address %s", local.Unmap())
	case v.Port != Port:
		return fmt.Sprintf("port %d", v.Port)
	case v.Learning:
		return "learning on"
	case !v.Proxy:
		return "proxy off"
	case v.L2miss || v.L3miss:
		return "miss notifications on"
	case v.Group != nil && !v.Group.IsUnspecified():
		return fmt.Sprintf("group %s", v.Group)
	}
	return ""
}

// ensureDevice makes d's VXLAN device exist with d's settings, a port of
// d.Bridge, and up. It is idempotent. A device it creates is removed
// again if a later step fails.
func ensureDevice(h *netlink.Handle, d Device) (err error) {
	name := DeviceName(d.VNI)
	br, err := h.LinkByName(d.Bridge)
	if kernel.LinkNotFound(err) {
		return fmt.Errorf("vxlan device %s: bridge %s does not exist", name, d.Bridge)
	}
	if err != nil {
		return fmt.Errorf("vxlan device %s: look up bridge %s: %w", name, d.Bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("vxlan device %s: %s is a %s, not a bridge", name, d.Bridge, br.Type())
	}
	if err := checkLocal(h, d.Local); err != nil {
		return fmt.Errorf("vxlan device %s: %w", name, err)
	}

	link, err := h.LinkByName(name)
	switch {
	case kernel.LinkNotFound(err):
		link = nil
	case err != nil:
		return fmt.Errorf("look up vxlan device %s: %w", name, err)
	default:
		v, ok := link.(*netlink.Vxlan)
		if !ok {
			return fmt.Errorf("create vxlan device %s: an interface of type %s has that name", name, link.Type())
		}
		if v.VxlanId != int(d.VNI) {
			return fmt.Errorf("create vxlan device %s: it exists with VNI %d", name, v.VxlanId)
		}
		if why := d.differs(v); why != "" {
			// The name is ours (DevicePrefix): a device left with other
			// settings is replaced; the caller reprograms its entries.
			if err := h.LinkDel(v); err != nil {
				return fmt.Errorf("replace vxlan device %s (%s): %w", name, why, err)
			}
			link = nil
		}
	}
	if link == nil {
		if err := h.LinkAdd(d.link()); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("create vxlan device %s: %w", name, vniHolder(h, d.VNI, err))
			}
			return fmt.Errorf("create vxlan device %s: %w", name, err)
		}
		defer func() {
			if err != nil {
				if derr := deleteDevice(h, d.VNI); derr != nil {
					err = errors.Join(err, derr)
				}
			}
		}()
		if link, err = h.LinkByName(name); err != nil {
			return fmt.Errorf("look up vxlan device %s: %w", name, err)
		}
	}
	if link.Attrs().MTU != d.MTU {
		if err := h.LinkSetMTU(link, d.MTU); err != nil {
			return fmt.Errorf("set MTU %d on vxlan device %s: %w", d.MTU, name, err)
		}
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("put vxlan device %s on bridge %s: %w", name, d.Bridge, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set vxlan device %s up: %w", name, err)
	}
	return nil
}

// checkLocal refuses a VTEP address this host does not have: the device
// would be made, yet nothing it sends would leave.
func checkLocal(h *netlink.Handle, local netip.Addr) error {
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == local {
			return nil
		}
	}
	return fmt.Errorf("local VTEP address %s is not an address of this host", local)
}

// vniHolder names the device that already uses vni, the usual reason
// the kernel refuses a new VXLAN device with EEXIST.
func vniHolder(h *netlink.Handle, vni uint32, err error) error {
	links, lerr := h.LinkList()
	if lerr != nil {
		return err
	}
	for _, l := range links {
		if v, ok := l.(*netlink.Vxlan); ok && v.VxlanId == int(vni) && v.Port == Port {
			return fmt.Errorf("VNI %d is already used by vxlan device %s: %w", vni, v.Name, err)
		}
	}
	return err
}

// deleteDevice removes the VXLAN device of vni, with every FDB and
// neighbour entry on it; one already gone is success.
func deleteDevice(h *netlink.Handle, vni uint32) error {
	name := DeviceName(vni)
	link, err := h.LinkByName(name)
	if kernel.LinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up vxlan device %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Vxlan); !ok {
		return fmt.Errorf("delete vxlan device %s: an interface of type %s has that name", name, link.Type())
	}
	if err := h.LinkDel(link); err != nil && !kernel.LinkNotFound(err) {
		return fmt.Errorf("delete vxlan device %s: %w", name, err)
	}
	return nil
}

// deviceVNIs lists the VNIs of the VXLAN devices named by DeviceName.
func deviceVNIs(h *netlink.Handle) ([]uint32, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []uint32
	for _, l := range links {
		if vni, ok := ParseDeviceName(l.Attrs().Name); ok && l.Type() == "vxlan" {
			out = append(out, vni)
		}
	}
	return out, nil
}
