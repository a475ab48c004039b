// Package overlay is the kernel data path of vxbridge's multi-host
// networks: per overlay (VNI) and host, a VXLAN device on the overlay's
// bridge, and for every remote endpoint an FDB entry (its MAC → its host's
// VTEP) and a neighbour entry (its IP → its MAC) on that device. Learning
// and flooding are off and the device answers ARP and neighbour
// solicitations itself (proxy), so no ARP crosses the tunnel: the control
// plane, not the wire, says where every endpoint is.
//
// Every change goes through one goroutine, the only place entries are
// programmed (the design of libnetwork's peerdb), and each call returns
// once its change is in the kernel. The package uses standard library
// types only in its API, so the driver can call it through a small
// interface of its own.
package overlay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vxbridge/vxbridge/kernel"
)

// ErrClosed is returned by calls on a closed Overlay.
var ErrClosed = errors.New("overlay is closed")

// Overlay holds the peer table of this host and applies it.
type Overlay struct {
	nl   *netlink.Handle
	log  *slog.Logger
	ops  chan func()
	quit chan struct{}
	done chan struct{}
	tab  table // used by the loop goroutine only
	// ports are the local endpoints of each VNI, for the fast path (loop
	// goroutine only).
	ports map[uint32][]Local
	// fastOff holds why vni's fast path could not be set (loop goroutine
	// only).
	fastOff map[uint32]error
	seen    Observer
}

// Observer hears, once per remote endpoint (incarnation), when its
// entries were first in this host's kernel: advertised is when its host
// advertised it (by that host's clock, so skewed by the clocks'
// difference; zero if unknown), given when the control plane gave it
// here. It runs on the loop goroutine: it must be quick.
type Observer func(advertised, given, programmed time.Time)

// New starts the goroutine that applies every change, in the process's
// network namespace (the host's, for the plugin). Close stops it. seen
// may be nil.
func New(log *slog.Logger, seen Observer) *Overlay {
	return newOverlay(&netlink.Handle{}, log, seen) // a zero Handle opens a socket per call
}

// newOverlay programs through h, so tests can aim an Overlay at a
// namespace of theirs.
func newOverlay(h *netlink.Handle, log *slog.Logger, seen Observer) *Overlay {
	o := &Overlay{nl: h, log: log, seen: seen, ports: map[uint32][]Local{}, fastOff: map[uint32]error{}, ops: make(chan func()), quit: make(chan struct{}), done: make(chan struct{})}
	go o.loop()
	return o
}

func (o *Overlay) loop() {
	defer close(o.done)
	for {
		select {
		case op := <-o.ops:
			op()
		case <-o.quit:
			return
		}
	}
}

// Close stops the goroutine. The devices and entries stay in the kernel,
// so traffic keeps flowing across a restart of the plugin.
func (o *Overlay) Close() {
	select {
	case <-o.quit:
	default:
		close(o.quit)
	}
	<-o.done
}

// do runs fn on the loop goroutine, after the changes queued before it,
// and waits for its result. If ctx ends first, the change is still
// applied later, in its turn.
func (o *Overlay) do(ctx context.Context, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err // never applied
	}
	res := make(chan error, 1)
	select {
	case o.ops <- func() { res <- fn() }:
	case <-o.quit:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return fmt.Errorf("change queued, not yet applied: %w", ctx.Err())
	}
}

// EnsureDevice makes the VXLAN device of d.VNI exist with d's settings
// (idempotent; a device of that name with other settings is replaced),
// then programs every peer the table holds for the VNI.
func (o *Overlay) EnsureDevice(ctx context.Context, d Device) error {
	d.Local = d.Local.Unmap()
	if err := d.check(); err != nil {
		return err
	}
	return o.do(ctx, func() error {
		if err := ensureDevice(o.nl, d); err != nil {
			return err
		}
		return o.program(d.VNI, nil)
	})
}

// DeleteDevice removes the VXLAN device of vni, its entries with it, and
// forgets the VNI's peers. A device already gone is success.
func (o *Overlay) DeleteDevice(ctx context.Context, vni uint32) error {
	if err := checkVNI(vni); err != nil {
		return err
	}
	return o.do(ctx, func() error {
		o.tab.forget(vni)
		delete(o.ports, vni)
		delete(o.fastOff, vni)
		return deleteDevice(o.nl, vni)
	})
}

// Devices lists the VNIs of the VXLAN devices on this host named with
// DevicePrefix, for an orphan clean-up.
func (o *Overlay) Devices(ctx context.Context) ([]uint32, error) {
	var out []uint32
	err := o.do(ctx, func() (err error) {
		out, err = deviceVNIs(o.nl)
		return err
	})
	return out, err
}

// Add makes p a peer of vni and programs it. A peer with p's MAC is
// replaced. Without the VNI's device, p is kept and programmed when
// EnsureDevice makes it.
func (o *Overlay) Add(ctx context.Context, vni uint32, p Peer) error {
	q, err := checkPeers(vni, p)
	if err != nil {
		return err
	}
	return o.do(ctx, func() error {
		o.tab.add(vni, q[0])
		return o.program(vni, nil)
	})
}

// Remove drops p from vni and its entries from the device. If the table
// holds another peer with p's MAC (the address was reused and its Add came
// first), that peer and its entries stay.
func (o *Overlay) Remove(ctx context.Context, vni uint32, p Peer) error {
	q, err := checkPeers(vni, p)
	if err != nil {
		return err
	}
	return o.do(ctx, func() error {
		o.tab.remove(vni, q[0])
		return o.program(vni, q[0].entries())
	})
}

// SetPorts makes ports the whole set of vni's local endpoints that take
// the fast path (see fastpath.go), and programs their filters.
func (o *Overlay) SetPorts(ctx context.Context, vni uint32, ports []Local) error {
	if err := checkVNI(vni); err != nil {
		return err
	}
	for _, p := range ports {
		if len(p.MAC) != 6 || p.Link == "" {
			return fmt.Errorf("VNI %d: port %q: MAC %q is not an Ethernet address", vni, p.Link, p.MAC)
		}
	}
	ports = slices.Clone(ports)
	return o.do(ctx, func() error {
		old := o.ports[vni]
		o.ports[vni] = ports
		if err := o.program(vni, nil); err != nil {
			return err
		}
		if err := o.dropPorts(old, ports); err != nil {
			o.log.Warn("overlay fast path", "vni", vni, "err", err)
		}
		return nil
	})
}

// Sync makes peers the whole set of vni: peers missing from the device
// are added and every other entry on it is removed, now and on later
// changes. Until the first Sync of a VNI, entries the device already
// holds (from before a restart) are left in place.
func (o *Overlay) Sync(ctx context.Context, vni uint32, peers []Peer) error {
	ps, err := checkPeers(vni, peers...)
	if err != nil {
		return err
	}
	return o.do(ctx, func() error {
		for _, p := range o.tab.sync(vni, ps) {
			o.log.Warn("two peers with one MAC: the later one wins", "vni", vni, "dropped", p.Peer())
		}
		return o.program(vni, nil)
	})
}

func checkPeers(vni uint32, peers ...Peer) ([]peer, error) {
	if err := checkVNI(vni); err != nil {
		return nil, err
	}
	out := make([]peer, 0, len(peers))
	now := time.Now() // given: before the wait for the loop goroutine
	for _, p := range peers {
		q, err := toPeer(p)
		if err != nil {
			return nil, fmt.Errorf("VNI %d: %w", vni, err)
		}
		q.given = now
		out = append(out, q)
	}
	return out, nil
}

// program brings the entries on the device of vni in line with the table
// (see diff); gone are entries explicitly removed. Without the device
// there is nothing to do yet.
func (o *Overlay) program(vni uint32, gone []entry) error {
	dev, err := o.device(vni)
	if dev == nil || err != nil {
		return err
	}
	have, err := listEntries(o.nl, dev.Index)
	if err != nil {
		return fmt.Errorf("program vxlan device %s: %w", dev.Name, err)
	}
	del, add := diff(o.tab.wanted(vni, local(dev)), have, o.tab.synced(vni), gone)
	if err := apply(o.nl, dev.Index, del, add); err != nil {
		return fmt.Errorf("program vxlan device %s: %w", dev.Name, err)
	}
	if len(del)+len(add) > 0 {
		o.log.Debug("programmed peers", "device", dev.Name, "added", len(add), "deleted", len(del))
	}
	o.observe(vni, local(dev), add)
	// The fast path only ever speeds traffic up (see fastpath.go): its
	// failure (a kernel without u32 or mirred) leaves the bridge path.
	if err := o.fastPath(vni, dev); err != nil {
		o.log.Warn("overlay fast path off: traffic takes the bridge", "device", dev.Name, "err", err)
		o.fastOff[vni] = err
	} else {
		delete(o.fastOff, vni)
	}
	return nil
}

// observe reports the peers of vni programmed for the first time: those
// with an entry among add. A peer whose entries the kernel already held
// (from before a restart of the plugin) is marked without a report: its
// lag is unknown.
func (o *Overlay) observe(vni uint32, local netip.Addr, add []entry) {
	now := time.Now()
	added := map[mac]bool{}
	for _, e := range add {
		added[e.mac] = true
	}
	for _, p := range o.tab.peers(vni) {
		if p.programmed || p.vtep == local {
			continue
		}
		if added[p.mac] && o.seen != nil {
			o.seen(p.advertised, p.given, now)
		}
		o.tab.programmed(vni, p.mac)
	}
}

// device returns the VXLAN device of vni, nil if there is none.
func (o *Overlay) device(vni uint32) (*netlink.Vxlan, error) {
	name := DeviceName(vni)
	link, err := o.nl.LinkByName(name)
	if kernel.LinkNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up vxlan device %s: %w", name, err)
	}
	v, ok := link.(*netlink.Vxlan)
	if !ok {
		return nil, fmt.Errorf("vxlan device %s: an interface of type %s has that name", name, link.Type())
	}
	return v, nil
}

func local(v *netlink.Vxlan) netip.Addr {
	a, _ := netip.AddrFromSlice(v.SrcAddr)
	return a.Unmap()
}

// Status is what one VNI wants and what its device holds, for a doctor.
type Status struct {
	Device     string  // the VXLAN device, "" if it does not exist
	Synced     bool    // a full set was given (Sync): stale entries are removed
	Wanted     []Peer  // the peers the control plane gave, by MAC
	Programmed []Entry // the entries on the device
	Missing    []Entry // wanted but not on the device
	Stale      []Entry // on the device but not wanted
	// The fast path's filters (see fastpath.go): wanted but absent (the
	// bridge carries that traffic, slower), present but not wanted
	// (frames go astray), and why it is off, if it could not be set.
	FastMissing []Redirect
	FastStale   []Redirect
	FastOff     string
}

// Status reads back vni's peers and its device's entries, after every
// change queued before it.
func (o *Overlay) Status(ctx context.Context, vni uint32) (Status, error) {
	if err := checkVNI(vni); err != nil {
		return Status{}, err
	}
	var st Status
	err := o.do(ctx, func() error {
		st.Synced = o.tab.synced(vni)
		for _, p := range o.tab.peers(vni) {
			st.Wanted = append(st.Wanted, p.Peer())
		}
		dev, err := o.device(vni)
		if err != nil {
			return err
		}
		have := map[entry]bool{}
		want := o.tab.wanted(vni, netip.Addr{})
		if dev != nil {
			st.Device = dev.Name
			if have, err = listEntries(o.nl, dev.Index); err != nil {
				return fmt.Errorf("read vxlan device %s: %w", dev.Name, err)
			}
			want = o.tab.wanted(vni, local(dev))
			if st.FastMissing, st.FastStale, err = o.checkFastPath(vni, dev); err != nil {
				return err
			}
			if err := o.fastOff[vni]; err != nil {
				st.FastOff = err.Error()
			}
		}
		stale, missing := diff(want, have, true, nil)
		st.Missing, st.Stale = entries(missing), entries(stale)
		st.Programmed = entries(slices.SortedFunc(maps.Keys(have), compareEntries))
		return nil
	})
	return st, err
}

func entries(es []entry) []Entry {
	var out []Entry
	for _, e := range es {
		out = append(out, e.Entry())
	}
	return out
}
