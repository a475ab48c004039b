package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vxbridge/vxbridge/cluster"
	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/ipam"
	"github.com/vxbridge/vxbridge/names"
	"github.com/vxbridge/vxbridge/overlay"
	"github.com/vxbridge/vxbridge/reconcile"
	"github.com/vxbridge/vxbridge/store"
	"github.com/vxbridge/vxbridge/store/consul"
)

// Multi-host wiring: with CONSUL_HTTP_ADDR set, this host joins the
// cluster (package cluster, on store/consul), the driver gets overlay
// networks (VXLAN devices from package overlay), every change in the
// cluster programs the remote endpoints into the kernel, and the
// cluster's overlays are created in (and removed from) this host's dockerd.
// Containers on overlays resolve the names of the overlay's containers on
// other hosts through the plugin's resolver (package names).

// clusterStore opens the Consul store the environment names (the Consul
// way: CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, …), or returns
// nil when none is set: a single host needs no Consul.
func clusterStore(log *slog.Logger) (*consul.Store, error) {
	if os.Getenv("CONSUL_HTTP_ADDR") == "" {
		return nil, nil
	}
	return consul.Open(consul.Options{Log: log})
}

// hostName names this host in the cluster: VXBRIDGE_HOST, else the
// hostname. It must be stable: the host's address blocks carry it.
func hostName() string {
	if h := os.Getenv("VXBRIDGE_HOST"); h != "" {
		return h
	}
	h, _ := os.Hostname()
	return h
}

// joinCluster resolves the tunnel address (VXBRIDGE_VTEP, else the address
// the local Consul agent advertises), gives the driver its overlays, joins
// and starts the watches. Until Consul answers it retries in the
// background: the plugin serves local networks meanwhile.
func joinCluster(ctx context.Context, log *slog.Logger, cs *consul.Store, local store.Store, host string,
	drv *driver.Driver, alloc *ipam.Allocator, ovs *reconcile.Overlays, docker *reconcile.Docker, seen overlay.Observer) {
	// The resolver serves (and forwards) before the cluster answers: the
	// overlay bridges send it every query their containers' DNS forwards.
	table := &names.Table{}
	startResolver(ctx, log, table)
	vtep, err := tunnelAddress(ctx, cs)
	for lvl := slog.LevelWarn; err != nil; lvl = slog.LevelDebug { // once, then as the store (once per outage)
		log.Log(ctx, lvl, "cannot join the cluster yet; overlay networks wait for it", "consul", cs.Address(), "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
		vtep, err = tunnelAddress(ctx, cs)
	}
	node, err := cluster.New(cluster.Config{Store: cs, Local: local, Host: host, VTEP: vtep, Log: log,
		Registered: func() { checkBlocks(log, drv, alloc) }})
	if err != nil {
		log.Error("cluster", "err", err)
		return
	}
	dp := overlay.New(log, seen)
	drv.Multihost(node, dp, alloc)
	eps, err := drv.OverlayEndpoints()
	if err != nil {
		log.Error("list overlay endpoints", "err", err)
	}
	if err := node.Join(ctx, eps); err != nil {
		log.Warn("join the cluster (retrying)", "err", err)
	}
	defs := make(chan []cluster.Overlay, 1)
	go func() {
		// dockerd calls the plugin back: never from the watch itself.
		var last []cluster.Overlay
		seen := false // an empty cluster is a set too: its instances go
		// The tick brings back an instance removed here while other hosts
		// still use the overlay (the cluster did not change, so no watch
		// fires), and retries what dockerd refused.
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case last = <-defs:
				seen = true
			case <-tick.C:
			}
			if seen {
				ovs.Sync(ctx, last)
			}
		}
	}()
	go func() {
		// A conflict stays reported until it is resolved.
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(blockCheckInterval):
			}
			if len(alloc.BlockConflicts()) > 0 {
				checkBlocks(log, drv, alloc)
			}
		}
	}()
	learner := &names.Learner{Docker: docker, Node: node, Networks: endpointNetworks(drv), Log: log, Table: table}
	go learner.Run(ctx)
	go node.Watch(ctx, func(all []cluster.Overlay, eps []cluster.Endpoint) {
		programPeers(ctx, log, dp, host, all, eps)
		table.Update(host, all, eps)
		select {
		case <-defs:
		default:
		}
		defs <- all
	})
}

// blockCheckInterval is how often address blocks in conflict are checked
// again.
const blockCheckInterval = time.Minute

// checkBlocks checks this host's address blocks against the cluster (see
// ipam.CheckBlocks): after a registration, this host may come back from
// being removed by an operator (vxbridge forget-host) with its old state.
func checkBlocks(log *slog.Logger, drv *driver.Driver, alloc *ipam.Allocator) {
	eps, err := drv.OverlayEndpoints()
	if err != nil {
		log.Error("check address blocks: list overlay endpoints", "err", err)
		return
	}
	var addrs []netip.Addr
	for _, ep := range eps {
		for _, a := range []netip.Addr{ep.IPv4, ep.IPv6} {
			if a.IsValid() {
				addrs = append(addrs, a)
			}
		}
	}
	c, err := alloc.CheckBlocks(addrs)
	if err != nil {
		log.Error("check address blocks against the cluster", "err", err)
		return
	}
	if c.Dropped+c.Reclaimed > 0 {
		log.Warn("address blocks the cluster no longer gave this host (forget-host?): dropped the unused, claimed back the used",
			"dropped", c.Dropped, "claimed back", c.Reclaimed)
	}
	for _, x := range c.Conflicts {
		log.Error("address block held by another host while containers here use it: their addresses may be in use twice; "+
			"reconnect or re-create those containers here (docker network disconnect/connect) to give them addresses of this host's own",
			"overlay", x.Overlay, "block", x.Block, "holder", x.Holder, "addresses", x.Addresses)
	}
}

func tunnelAddress(ctx context.Context, cs *consul.Store) (netip.Addr, error) {
	if v := os.Getenv("VXBRIDGE_VTEP"); v != "" {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return a, fmt.Errorf("VXBRIDGE_VTEP %q: %w", v, err)
		}
		return a, nil
	}
	return cs.AgentAddress(ctx)
}

// programPeers makes each overlay's VXLAN device know exactly the
// endpoints the other hosts advertise.
func programPeers(ctx context.Context, log *slog.Logger, dp *overlay.Overlay, host string, defs []cluster.Overlay, eps []cluster.Endpoint) {
	byOverlay := map[string][]overlay.Peer{}
	for _, ep := range eps {
		if ep.Host == host {
			continue
		}
		mac, err := net.ParseMAC(ep.MAC)
		if err != nil {
			log.Warn("endpoint with a bad MAC", "host", ep.Host, "endpoint", ep.ID, "err", err)
			continue
		}
		byOverlay[ep.Overlay] = append(byOverlay[ep.Overlay], overlay.Peer{MAC: mac, IPv4: ep.IPv4, IPv6: ep.IPv6, VTEP: ep.VTEP, Advertised: ep.Advertised})
	}
	for _, def := range defs {
		if err := dp.Sync(ctx, def.VNI, byOverlay[def.Name]); err != nil {
			log.Warn("program overlay peers", "overlay", def.Name, "vni", def.VNI, "err", err)
		}
	}
}

// startResolver serves cross-host names at driver.ResolverAddr (where the
// overlay bridges DNAT IPv4 queries) and on port 53 of the resolver's own
// addresses (dockerd's `dns` setting, internal overlays' route, IPv6
// queries), forwarding other names to the name servers of the host's
// resolv.conf (a managed plugin sees the host's; it runs in the host's
// network namespace, so loopback servers work too). The resolver's
// addresses are checked every few seconds and stay when the plugin stops:
// a query to a closed port fails at once, so dockerd's DNS moves on to the
// next server (see README, names).
func startResolver(ctx context.Context, log *slog.Logger, table *names.Table) {
	ups, err := names.Upstreams("/etc/resolv.conf")
	if err != nil {
		log.Warn("no upstream name servers: containers on overlays resolve only cross-host names", "err", err)
	}
	_, v6, err := driver.EnsureResolverAddrs()
	if err != nil {
		log.Error("no resolver address: only the zero-flag interception of IPv4 queries works", "err", err)
	}
	addrs := []netip.AddrPort{netip.MustParseAddrPort(driver.ResolverAddr)}
	if err == nil {
		addrs = append(addrs, netip.AddrPortFrom(driver.ResolverIPv4, 53))
	}
	if v6 {
		addrs = append(addrs, netip.AddrPortFrom(driver.ResolverIPv6, 53))
	}
	var srvs []*names.Server
	for _, a := range addrs {
		srv, err := names.Serve(a, table, ups, log)
		if err != nil {
			log.Error("no resolver for cross-host names here: containers asking it cannot resolve other names either", "err", err)
			continue
		}
		srvs = append(srvs, srv)
	}
	log.Info("resolver for cross-host names", "addrs", addrs, "upstreams", ups)
	go func() {
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				for _, srv := range srvs {
					srv.Close()
				}
				return
			case <-tick.C:
			}
			// The sockets stay bound while an address is gone: back on the
			// link, it is served again.
			if changed, _, err := driver.EnsureResolverAddrs(); err != nil {
				log.Warn("resolver address", "err", err)
			} else if changed {
				log.Warn("resolver address was missing: restored")
			}
		}
	}()
}

// endpointNetworks maps the driver's endpoints to their dockerd networks.
func endpointNetworks(drv *driver.Driver) func() (map[string]string, error) {
	return func() (map[string]string, error) {
		st, err := drv.State()
		if err != nil {
			return nil, err
		}
		out := make(map[string]string, len(st.Endpoints))
		for _, ep := range st.Endpoints {
			out[ep.ID] = ep.NetworkID
		}
		return out, nil
	}
}
