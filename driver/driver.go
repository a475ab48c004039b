// Package driver implements Docker's NetworkDriver protocol for vxbridge:
// one Linux bridge per network, one veth pair per endpoint, FORWARD rules
// in vxbridge's own chains. Every object it makes is recorded in the store
// first, so a restart can rebuild or remove it.
package driver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	api "github.com/docker/go-plugins-helpers/network"

	"github.com/vxbridge/vxbridge/cluster"
	"github.com/vxbridge/vxbridge/store"
)

// Driver serves the NetworkDriver protocol.
type Driver struct {
	store store.Store
	fw    *firewall
	log   *slog.Logger
	// mu is held shared by every request and exclusively by Repair, so a
	// repair never sees a request half way.
	mu sync.RWMutex
	// nets holds one lock per network: creating or deleting a network
	// excludes requests for its endpoints, while requests of different
	// networks never wait for each other's kernel calls.
	netsMu sync.Mutex
	nets   map[string]*sync.RWMutex
	// claimMu makes "is this bridge name free? then record it" one step.
	claimMu sync.Mutex
	// portsMu guards reserved, each endpoint's held host ports. The kernel
	// itself keeps two endpoints from binding one port.
	portsMu  sync.Mutex
	reserved map[string]reservation
	// broken maps the networks the last Repair could not bring in line to
	// why (written under mu's write lock).
	broken map[string]string
	// routeMu makes "does the container have the resolver route? then
	// give it" one step (Join).
	routeMu sync.Mutex
	// For overlay networks; nil on a host without a cluster (Multihost).
	cluster  Cluster
	datapath Datapath
	pools    PoolBinder
}

var _ api.Driver = (*Driver)(nil)

// New returns a driver whose state lives in s, with vxbridge's chains in
// place. The caller brings the kernel in line with the records (a reboot,
// a crash or a firewall reload may have removed or left things) with
// Repair before serving.
func New(s store.Store, log *slog.Logger) (*Driver, error) {
	fw, err := newFirewall()
	if err != nil {
		return nil, err
	}
	if err := fw.setup(); err != nil {
		return nil, err
	}
	return &Driver{store: s, fw: fw, log: log, nets: map[string]*sync.RWMutex{}, reserved: map[string]reservation{}}, nil
}

// lockNetwork takes the locks a request on network id needs: exclusive
// for creating or deleting it, shared for its endpoints. It returns the
// unlock.
func (d *Driver) lockNetwork(id string, exclusive bool) func() {
	d.mu.RLock()
	d.netsMu.Lock()
	l := d.nets[id]
	if l == nil {
		l = &sync.RWMutex{}
		d.nets[id] = l
	}
	d.netsMu.Unlock()
	if exclusive {
		l.Lock()
		return func() { l.Unlock(); d.mu.RUnlock() }
	}
	l.RLock()
	return func() { l.RUnlock(); d.mu.RUnlock() }
}

func (d *Driver) ensureNetwork(n *Network) error {
	if err := ensureBridge(n); err != nil {
		return err
	}
	if n.VNI != 0 {
		if err := d.ensureDevice(n); err != nil {
			return err
		}
	}
	return d.fw.ensure(networkRules(n), n.Options.IPv6)
}

// GetCapabilities: networks are local to a host (global scope needs swarm,
// see shared notes); a network spanning hosts will be one local network per
// host, tied together by the plugin.
func (d *Driver) GetCapabilities() (*api.CapabilitiesResponse, error) {
	return &api.CapabilitiesResponse{Scope: api.LocalScope, ConnectivityScope: api.LocalScope}, nil
}

// CreateNetwork records the network, then builds its bridge and rules. On
// any failure nothing of it is left behind.
func (d *Driver) CreateNetwork(req *api.CreateNetworkRequest) (err error) {
	if err := checkIDs(req.NetworkID); err != nil {
		return err
	}
	opts, err := parseNetOptions(req.NetworkID, req.Options)
	if err != nil {
		return err
	}
	n := &Network{ID: req.NetworkID, Options: opts}
	if n.Gateway4, err = gateway(req.IPv4Data, false); err != nil {
		return err
	}
	if opts.IPv6 {
		if n.Gateway6, err = gateway(req.IPv6Data, true); err != nil {
			return err
		}
	}
	defer d.lockNetwork(n.ID, true)()
	var def cluster.Overlay
	if opts.Overlay != "" {
		_, mtuGiven := genericStrings(req.Options)[optMTU]
		if def, err = d.defineOverlay(req, n, mtuGiven); err != nil {
			return err
		}
		defer func() {
			// A definition this request made goes with its failure.
			if err != nil && def.Creator == d.cluster.Host() {
				d.cluster.Undefine(def.Name)
			}
		}()
	}
	if old, err := load[Network](d.store, networkKey(n.ID)); err == nil {
		// dockerd repeated itself: the same request makes sure, a
		// different one is refused.
		if *old != *n {
			return fmt.Errorf("network %s already exists with other settings", short(n.ID, 12))
		}
		return d.ensureNetwork(old)
	}
	if err := d.claim(n); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			d.teardownNetwork(n)
		}
	}()
	if err := d.ensureNetwork(n); err != nil {
		return err
	}
	d.log.Info("network created", "network", short(n.ID, 12), "bridge", opts.Bridge, "gateway", n.Gateway4, "gateway6", n.Gateway6, "mtu", n.Options.MTU, "icc", opts.ICC, "internal", opts.Internal, "overlay", opts.Overlay, "vni", n.VNI)
	return nil
}

// claim records the network, refusing a bridge name another network or
// another program already uses: taking over someone else's bridge would
// wire containers into a foreign network.
func (d *Driver) claim(n *Network) error {
	d.claimMu.Lock()
	defer d.claimMu.Unlock()
	nets, err := loadAll[Network](d.store, networkKeys)
	if err != nil {
		return err
	}
	for _, o := range nets {
		if o.Options.Bridge == n.Options.Bridge {
			return fmt.Errorf("bridge %s is already used by network %s", n.Options.Bridge, short(o.ID, 12))
		}
	}
	if linkExists(n.Options.Bridge) {
		return fmt.Errorf("bridge %s: an interface with that name already exists on the host", n.Options.Bridge)
	}
	if err := create(d.store, networkKey(n.ID), n); err != nil {
		return fmt.Errorf("record network: %w", err)
	}
	return nil
}

// gateway takes the network's gateway from the first IPAM data entry;
// dockerd sends it in CIDR form.
func gateway(data []*api.IPAMData, v6 bool) (netip.Prefix, error) {
	if len(data) == 0 || data[0] == nil || data[0].Gateway == "" {
		if v6 {
			return netip.Prefix{}, errors.New("IPv6 is enabled but no IPv6 gateway was assigned")
		}
		return netip.Prefix{}, errors.New("no IPv4 gateway was assigned")
	}
	if len(data) > 1 {
		return netip.Prefix{}, fmt.Errorf("%d address pools of one family are not supported, give one --subnet per family", len(data))
	}
	p, err := netip.ParsePrefix(data[0].Gateway)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("malformed gateway %q: %w", data[0].Gateway, err)
	}
	if p.Addr().Is6() != v6 {
		return netip.Prefix{}, fmt.Errorf("gateway %s is of the wrong address family", p)
	}
	return p, nil
}

// DeleteNetwork removes the bridge, its rules, any endpoint dockerd never
// deleted, and the record.
func (d *Driver) DeleteNetwork(req *api.DeleteNetworkRequest) error {
	if err := checkIDs(req.NetworkID); err != nil {
		return err
	}
	defer d.lockNetwork(req.NetworkID, true)()
	n, err := load[Network](d.store, networkKey(req.NetworkID))
	if errors.Is(err, errNoRecord) {
		return nil // already gone: dockerd may repeat a delete
	}
	if err != nil {
		return err
	}
	if n.VNI != 0 {
		d.undefine(n)
	}
	if err := d.teardownNetwork(n); err != nil {
		return err
	}
	d.log.Info("network deleted", "network", short(n.ID, 12), "bridge", n.Options.Bridge)
	return nil
}

// teardownNetwork undoes everything a network owns. The record goes last,
// so a failure part way leaves it for the next attempt or restart.
func (d *Driver) teardownNetwork(n *Network) error {
	eps, err := loadAll[Endpoint](d.store, endpointKeys+n.ID+"/")
	if err != nil {
		return err
	}
	for _, ep := range eps {
		if err := d.teardownEndpoint(ep); err != nil {
			return err
		}
	}
	if err := d.fw.remove(networkRules(n), n.Options.IPv6); err != nil {
		return err
	}
	if n.VNI != 0 {
		if err := d.deleteDevice(n); err != nil {
			return err
		}
	}
	if err := deleteLink("bridge", n.Options.Bridge); err != nil {
		return err
	}
	return remove(d.store, networkKey(n.ID))
}

// CreateEndpoint makes the veth pair. dockerd has the addresses from IPAM;
// the driver picks the MAC when dockerd leaves it empty.
func (d *Driver) CreateEndpoint(req *api.CreateEndpointRequest) (*api.CreateEndpointResponse, error) {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	if req.Interface == nil {
		return nil, errors.New("malformed request: no Interface")
	}
	defer d.lockNetwork(req.NetworkID, false)()
	n, err := d.usableNetwork(req.NetworkID)
	if err != nil {
		return nil, err
	}
	ep := &Endpoint{ID: req.EndpointID, NetworkID: n.ID, HostIf: vethName(req.EndpointID), PeerIf: peerName(req.EndpointID), MAC: req.Interface.MacAddress}
	if ep.Addr4, err = parseAddr(req.Interface.Address); err != nil {
		return nil, err
	}
	if ep.Addr6, err = parseAddr(req.Interface.AddressIPv6); err != nil {
		return nil, err
	}
	if err := inSubnet(ep.Addr4, n.Gateway4); err != nil {
		return nil, err
	}
	if err := inSubnet(ep.Addr6, n.Gateway6); err != nil {
		return nil, err
	}
	res := &api.CreateEndpointResponse{}
	if ep.MAC == "" {
		ep.MAC = macFor(ep.Addr4)
		res.Interface = &api.EndpointInterface{MacAddress: ep.MAC}
	}
	if old, err := load[Endpoint](d.store, endpointKey(n.ID, ep.ID)); err == nil {
		// A repeated request: answer as before if it is the same one.
		if old.Addr4 != ep.Addr4 || old.Addr6 != ep.Addr6 || (req.Interface.MacAddress != "" && old.MAC != ep.MAC) || !linkExists(old.HostIf) {
			return nil, fmt.Errorf("endpoint %s already exists with other settings", short(ep.ID, 12))
		}
		if res.Interface != nil {
			res.Interface.MacAddress = old.MAC
		}
		return res, nil
	}
	if err := create(d.store, endpointKey(n.ID, ep.ID), ep); err != nil {
		return nil, fmt.Errorf("record endpoint: %w", err)
	}
	if err := createVeth(ep, n.Options.Bridge, n.Options.MTU); err != nil {
		remove(d.store, endpointKey(n.ID, ep.ID))
		return nil, err
	}
	if err := d.advertise(n, ep); err != nil {
		deleteLink("veth", ep.HostIf)
		remove(d.store, endpointKey(n.ID, ep.ID))
		return nil, err
	}
	d.syncPorts(n)
	d.log.Debug("endpoint created", "network", short(n.ID, 12), "endpoint", short(ep.ID, 12), "veth", ep.HostIf, "addr", ep.Addr4, "addr6", ep.Addr6, "mac", ep.MAC)
	return res, nil
}

// usableNetwork loads a network's record, refusing one the last Repair
// could not bring in line: an endpoint on it would be wired to a bridge
// that is not there, or not ours.
func (d *Driver) usableNetwork(id string) (*Network, error) {
	n, err := load[Network](d.store, networkKey(id))
	if err != nil {
		return nil, fmt.Errorf("network %s: %w", short(id, 12), err)
	}
	if why := d.broken[id]; why != "" {
		return nil, fmt.Errorf("network %s is broken (%s); vxbridge retries it every pass, `vxbridge reconcile` reports it", short(id, 12), why)
	}
	return n, nil
}

// inSubnet checks an endpoint address against its network's subnet (the
// gateway's prefix): dockerd never sends another, but the socket is an API.
func inSubnet(addr, gw netip.Prefix) error {
	if !addr.IsValid() {
		return nil
	}
	if !gw.IsValid() || addr.Bits() != gw.Bits() || !gw.Masked().Contains(addr.Addr()) {
		return fmt.Errorf("endpoint address %s is not in the network's subnet %s", addr, gw.Masked())
	}
	return nil
}

func parseAddr(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("malformed endpoint address %q: %w", s, err)
	}
	return p, nil
}

// macFor derives the MAC from the IPv4 address as Docker does
// (02:42 + the four address bytes), so it is stable and unique per network;
// without IPv4 it is random, locally administered.
func macFor(p netip.Prefix) string {
	mac := make(net.HardwareAddr, 6)
	if p.IsValid() && p.Addr().Is4() {
		a := p.Addr().As4()
		mac[0], mac[1] = 0x02, 0x42
		copy(mac[2:], a[:])
		return mac.String()
	}
	randomMAC(mac)
	return mac.String()
}

// DeleteEndpoint removes the veth pair and the record.
func (d *Driver) DeleteEndpoint(req *api.DeleteEndpointRequest) error {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return err
	}
	defer d.lockNetwork(req.NetworkID, false)()
	ep, err := load[Endpoint](d.store, endpointKey(req.NetworkID, req.EndpointID))
	if errors.Is(err, errNoRecord) {
		return nil
	}
	if err != nil {
		return err
	}
	return d.teardownEndpoint(ep)
}

func (d *Driver) teardownEndpoint(ep *Endpoint) error {
	// dockerd skips Revoke when it could not reach the plugin.
	if err := d.unpublish(ep); err != nil {
		return err
	}
	n, err := load[Network](d.store, networkKey(ep.NetworkID))
	if err == nil && n.VNI != 0 && d.cluster != nil {
		// Its key also goes with this host's session, should this fail.
		if err := d.cluster.Withdraw(n.Options.Overlay, ep.ID); err != nil {
			d.log.Warn("withdraw overlay endpoint", "endpoint", short(ep.ID, 12), "err", err)
		}
	}
	if err := deleteLink("veth", ep.HostIf); err != nil {
		return err
	}
	if err := remove(d.store, endpointKey(ep.NetworkID, ep.ID)); err != nil {
		return err
	}
	if n != nil {
		d.syncPorts(n)
	}
	d.log.Debug("endpoint deleted", "network", short(ep.NetworkID, 12), "endpoint", short(ep.ID, 12))
	return nil
}

// EndpointInfo reports the kernel names, for `docker network inspect`-style
// debugging.
func (d *Driver) EndpointInfo(req *api.InfoRequest) (*api.InfoResponse, error) {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	ep, err := load[Endpoint](d.store, endpointKey(req.NetworkID, req.EndpointID))
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", short(req.EndpointID, 12), err)
	}
	info := map[string]string{"veth": ep.HostIf, "mac": ep.MAC}
	for i, b := range ep.Ports {
		info[fmt.Sprintf("port%d", i)] = b.String()
	}
	return &api.InfoResponse{Value: info}, nil
}

// Join hands the peer to dockerd, which moves it into the container as
// ethN, and names the gateway. An internal network has none, so the
// container gets no default route through it.
func (d *Driver) Join(req *api.JoinRequest) (*api.JoinResponse, error) {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	defer d.lockNetwork(req.NetworkID, false)()
	n, ep, err := d.loadEndpoint(req.NetworkID, req.EndpointID)
	if err != nil {
		return nil, err
	}
	res := &api.JoinResponse{InterfaceName: api.InterfaceName{SrcName: ep.PeerIf, DstPrefix: "eth"}}
	if !n.Options.Internal {
		if n.Gateway4.IsValid() {
			res.Gateway = n.Gateway4.Addr().String()
		}
		if n.Gateway6.IsValid() {
			res.GatewayIPv6 = n.Gateway6.Addr().String()
		}
		return res, nil
	}
	if n.VNI != 0 && n.Gateway4.IsValid() {
		route, err := d.resolverRoute(n, ep, req.SandboxKey)
		if err != nil {
			return nil, err
		}
		if route != nil {
			res.StaticRoutes = []*api.StaticRoute{route}
		}
	}
	return res, nil
}

// resolverRoute is the route an internal overlay's container needs to reach
// the resolver's own address (the one dockerd's `dns` setting names): an
// internal network gives no default route. It goes through the bridge,
// which holds the gateway address of internal networks too. dockerd fails
// a Join whose route the container already has (EEXIST), so only the
// first of a container's internal overlays gives it: that endpoint's
// record keeps the sandbox. Should that network leave the container while
// another internal overlay stays, the route goes with it (until the
// container is started or connected again).
func (d *Driver) resolverRoute(n *Network, ep *Endpoint, sandbox string) (*api.StaticRoute, error) {
	d.routeMu.Lock()
	defer d.routeMu.Unlock()
	if sandbox != "" {
		eps, err := loadAll[Endpoint](d.store, endpointKeys)
		if err != nil {
			return nil, fmt.Errorf("join: read endpoints: %w", err)
		}
		for _, o := range eps {
			if o.ID != ep.ID && o.ResolverRoute == sandbox {
				return nil, nil
			}
		}
	}
	ep.ResolverRoute = sandbox
	if err := save(d.store, endpointKey(n.ID, ep.ID), ep); err != nil {
		return nil, fmt.Errorf("join: record endpoint %s: %w", short(ep.ID, 12), err)
	}
	return &api.StaticRoute{
		Destination: netip.PrefixFrom(ResolverIPv4, 32).String(),
		RouteType:   0, // through a next hop
		NextHop:     n.Gateway4.Addr().String(),
	}, nil
}

// Leave needs no work: dockerd moves the peer back to the host, and
// DeleteEndpoint removes the pair.
func (d *Driver) Leave(*api.LeaveRequest) error { return nil }

// AllocateNetwork and FreeNetwork belong to swarm's global scope, which
// vxbridge does not use.
func (d *Driver) AllocateNetwork(*api.AllocateNetworkRequest) (*api.AllocateNetworkResponse, error) {
	return nil, errors.New("AllocateNetwork: vxbridge is a local-scope driver")
}

// FreeNetwork: see AllocateNetwork.
func (d *Driver) FreeNetwork(*api.FreeNetworkRequest) error {
	return errors.New("FreeNetwork: vxbridge is a local-scope driver")
}

// DiscoverNew and DiscoverDelete carry swarm node discovery; not used.
func (d *Driver) DiscoverNew(*api.DiscoveryNotification) error { return nil }

// DiscoverDelete: see DiscoverNew.
func (d *Driver) DiscoverDelete(*api.DiscoveryNotification) error { return nil }
