package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	api "github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"

	"github.com/vxbridge/vxbridge/cluster"
	"github.com/vxbridge/vxbridge/overlay"
)

// An overlay network is a local network on each host (a bridge, as any
// vxbridge network, with the same gateway address everywhere) plus a VXLAN
// device on that bridge; the cluster (Consul) holds its definition and
// every host's endpoints, and the datapath programs the remote ones.

// Cluster is the multi-host control plane (package cluster).
type Cluster interface {
	Host() string
	VTEP() netip.Addr
	Define(cluster.Overlay) (cluster.Overlay, error)
	Lookup(name string) (cluster.Overlay, error)
	Undefine(name string) error
	Advertise(context.Context, cluster.Endpoint) error
	Withdraw(overlay, endpointID string) error
	// For the operator's commands (ls, peers, doctor, forget-host).
	Overlays() ([]cluster.Overlay, error)
	Endpoints(overlay string) ([]cluster.Endpoint, error)
	Hosts() ([]cluster.Host, error)
}

// Datapath makes VXLAN devices (package overlay).
type Datapath interface {
	EnsureDevice(context.Context, overlay.Device) error
	DeleteDevice(context.Context, uint32) error
	Status(context.Context, uint32) (overlay.Status, error)
	SetPorts(context.Context, uint32, []overlay.Local) error
}

// PoolBinder is the plugin's IPAM: a pool bound to an overlay hands out
// addresses unique across the cluster.
type PoolBinder interface {
	BindOverlay(poolID, overlay string) error
	ReleaseHostBlocks(overlay, host string) (int, error)
}

// Multihost gives the driver what overlay networks need; without it (no
// Consul configured) overlay networks are refused with the way to enable
// them.
func (d *Driver) Multihost(c Cluster, dp Datapath, pools PoolBinder) {
	d.mu.Lock() // requests read these under the shared lock
	defer d.mu.Unlock()
	d.cluster, d.datapath, d.pools = c, dp, pools
}

// clusterTimeout bounds each call to the cluster during a request.
const clusterTimeout = 10 * time.Second

var errNoCluster = errors.New("overlay networks need Consul: set the plugin's CONSUL_HTTP_ADDR (docker plugin set vxbridge:latest CONSUL_HTTP_ADDR=host:8500, see the README)")

// vxlanOverhead is what VXLAN adds to each packet over IPv4.
const vxlanOverhead = 50

// defineOverlay records (or checks) the overlay cluster-wide and binds its
// pool: n gets the VNI and, unless the user chose one, the MTU of the
// definition (the underlay's less VXLAN's overhead).
func (d *Driver) defineOverlay(req *api.CreateNetworkRequest, n *Network, mtuGiven bool) (cluster.Overlay, error) {
	if d.cluster == nil {
		return cluster.Overlay{}, errNoCluster
	}
	space := req.IPv4Data[0].AddressSpace
	if space != "vxlocal" && space != "vxglobal" {
		return cluster.Overlay{}, fmt.Errorf("overlay network %s needs vxbridge's IPAM to allocate addresses cluster-wide: add --ipam-driver vxbridge:latest", n.Options.Overlay)
	}
	if !mtuGiven {
		mtu, err := underlayMTU(d.cluster.VTEP())
		if err != nil {
			return cluster.Overlay{}, err
		}
		n.Options.MTU = mtu - vxlanOverhead
	}
	def := cluster.Overlay{
		Name: n.Options.Overlay, VNI: n.Options.VNI, MTU: n.Options.MTU, Internal: n.Options.Internal, IPv6: n.Options.IPv6,
		Subnet4: n.Gateway4.Masked(), Gateway4: n.Gateway4.Addr(), Options: genericStrings(req.Options),
	}
	if n.Gateway6.IsValid() {
		def.Subnet6, def.Gateway6 = n.Gateway6.Masked(), n.Gateway6.Addr()
	}
	got, err := d.cluster.Define(def)
	if err != nil {
		return got, fmt.Errorf("overlay %s: %w", def.Name, err)
	}
	if got.Gateway4 != def.Gateway4 {
		return got, fmt.Errorf("overlay %s: its gateway is %s on every host, not %s (give --gateway %s)", def.Name, got.Gateway4, def.Gateway4, got.Gateway4)
	}
	n.VNI = got.VNI
	if !mtuGiven {
		n.Options.MTU = got.MTU
	}
	if err := d.pools.BindOverlay(space+"/"+req.IPv4Data[0].Pool, def.Name); err != nil {
		return got, fmt.Errorf("overlay %s: %w", def.Name, err)
	}
	return got, nil
}

func genericStrings(opts map[string]interface{}) map[string]string {
	g, _ := genericOptions(opts[keyGeneric])
	return g
}

// ensureDevice makes the overlay's VXLAN device on its bridge.
func (d *Driver) ensureDevice(n *Network) error {
	if d.datapath == nil {
		return errNoCluster
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	if err := d.datapath.EnsureDevice(ctx, overlay.Device{VNI: n.VNI, Local: d.cluster.VTEP(), MTU: n.Options.MTU, Bridge: n.Options.Bridge}); err != nil {
		return err
	}
	d.syncPorts(n)
	return nil
}

// syncPorts gives the datapath the network's endpoints for its fast path
// (overlay/fastpath.go), none when ICC is off: the fast path skips the
// bridge's FORWARD rules, ICC's drop among them. It is only ever an
// optimisation (a frame no filter takes crosses the bridge), so a failure
// is logged, never fatal to a request; the next change or Repair retries.
func (d *Driver) syncPorts(n *Network) {
	if n.VNI == 0 || d.datapath == nil {
		return
	}
	var ports []overlay.Local
	if n.Options.ICC {
		eps, err := loadAll[Endpoint](d.store, endpointKeys+n.ID+"/")
		if err != nil {
			d.log.Warn("overlay fast path", "network", short(n.ID, 12), "err", err)
			return
		}
		for _, ep := range eps {
			if m, err := net.ParseMAC(ep.MAC); err == nil {
				ports = append(ports, overlay.Local{MAC: m, Link: ep.HostIf})
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	if err := d.datapath.SetPorts(ctx, n.VNI, ports); err != nil {
		d.log.Warn("overlay fast path", "network", short(n.ID, 12), "err", err)
	}
}

func (d *Driver) deleteDevice(n *Network) error {
	if d.datapath == nil {
		return nil
	}
	// The device is this network's only while it is on this network's
	// bridge: a VNI freed and taken again by a newer overlay moves it to
	// the newer one's bridge, which an old instance removed late must not
	// take down.
	if dev, err := netlink.LinkByName(overlay.DeviceName(n.VNI)); err == nil {
		br, err := netlink.LinkByName(n.Options.Bridge)
		if err != nil || dev.Attrs().MasterIndex != br.Attrs().Index {
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	return d.datapath.DeleteDevice(ctx, n.VNI)
}

// advertise tells every host about a new endpoint of an overlay: once it
// returns, their watches program it, before dockerd starts the container.
func (d *Driver) advertise(n *Network, ep *Endpoint) error {
	if n.VNI == 0 {
		return nil
	}
	if d.cluster == nil {
		return errNoCluster
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	return d.cluster.Advertise(ctx, cluster.Endpoint{Overlay: n.Options.Overlay, ID: ep.ID, MAC: ep.MAC, IPv4: ep.Addr4.Addr(), IPv6: ep.Addr6.Addr()})
}

// OverlayEndpoints lists this host's endpoints on overlays, for the
// cluster to advertise again under a new session.
func (d *Driver) OverlayEndpoints() ([]cluster.Endpoint, error) {
	st, err := d.State()
	if err != nil {
		return nil, err
	}
	byID := map[string]*Network{}
	for _, n := range st.Networks {
		byID[n.ID] = n
	}
	var out []cluster.Endpoint
	for _, ep := range st.Endpoints {
		if n := byID[ep.NetworkID]; n != nil && n.VNI != 0 {
			out = append(out, cluster.Endpoint{Overlay: n.Options.Overlay, Host: d.cluster.Host(), VTEP: d.cluster.VTEP(), ID: ep.ID, MAC: ep.MAC, IPv4: ep.Addr4.Addr(), IPv6: ep.Addr6.Addr()})
		}
	}
	return out, nil
}

// undefine removes the overlay cluster-wide when this host's instance
// goes, unless another host still has containers on it (or the cluster
// cannot be asked): then only this host's instance goes, and it comes back
// while the overlay lives. dockerd removes a network whatever a remote
// driver answers (libnetwork honours only its own ForbiddenError from a
// driver's DeleteNetwork), so a refusal here could only leave a
// half-removed network behind.
func (d *Driver) undefine(n *Network) {
	err := errNoCluster
	if d.cluster != nil {
		err = d.cluster.Undefine(n.Options.Overlay)
	}
	if err != nil {
		d.log.Warn("overlay kept: only this host's instance is removed, and it comes back while the overlay lives", "overlay", n.Options.Overlay, "why", err)
	}
}
