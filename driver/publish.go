package driver

import (
	"errors"
	"fmt"
	"slices"

	api "github.com/docker/go-plugins-helpers/network"
)

// dockerd programs no DNAT and starts no proxy for a remote driver: the
// plugin publishes ports itself, in the kernel (DNAT), for the endpoint
// that carries the container's default route.

// ProgramExternalConnectivity publishes the endpoint's ports (-p, -P).
// Either every binding is programmed and recorded, or none is.
func (d *Driver) ProgramExternalConnectivity(req *api.ProgramExternalConnectivityRequest) error {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return err
	}
	defer d.lockNetwork(req.NetworkID, false)()
	n, ep, err := d.loadEndpoint(req.NetworkID, req.EndpointID)
	if err != nil {
		return err
	}
	reqs, err := parsePortMap(req.Options, n.Options.HostIPv4)
	if err != nil || len(reqs) == 0 {
		return err
	}
	if n.Options.Internal {
		d.log.Warn("not publishing ports on an internal network", "network", short(n.ID, 12), "endpoint", short(ep.ID, 12))
		return nil
	}
	if !ep.Addr4.IsValid() {
		return errors.New("publish ports: the endpoint has no IPv4 address")
	}
	if len(ep.Ports) > 0 {
		return nil // already published: dockerd repeats this as the gateway moves
	}
	bindings, res, err := reserve(reqs)
	if err != nil {
		return err
	}
	// Record first, rules second: after a crash in between, Repair
	// programs what the record says; a rule never outlives its record.
	ep.Ports = bindings
	if err := save(d.store, endpointKey(n.ID, ep.ID), ep); err != nil {
		res.release()
		return fmt.Errorf("record published ports: %w", err)
	}
	rules := endpointPortRules(n, ep)
	if err := d.fw.ensure(rules, false); err != nil {
		d.fw.remove(rules, false)
		res.release()
		ep.Ports = nil
		save(d.store, endpointKey(n.ID, ep.ID), ep)
		return fmt.Errorf("publish ports: %w", err)
	}
	d.portsMu.Lock()
	d.reserved[ep.ID] = res
	d.portsMu.Unlock()
	for _, b := range bindings {
		d.log.Info("published", "network", short(n.ID, 12), "endpoint", short(ep.ID, 12), "port", b.String(), "container", ep.Addr4.Addr())
	}
	return nil
}

// RevokeExternalConnectivity withdraws the endpoint's published ports.
func (d *Driver) RevokeExternalConnectivity(req *api.RevokeExternalConnectivityRequest) error {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return err
	}
	defer d.lockNetwork(req.NetworkID, false)()
	_, ep, err := d.loadEndpoint(req.NetworkID, req.EndpointID)
	if errors.Is(err, errNoRecord) {
		return nil
	}
	if err != nil {
		return err
	}
	return d.unpublish(ep)
}

// unpublish removes the endpoint's port rules, frees its host ports and
// records that. Nothing published is a no-op.
func (d *Driver) unpublish(ep *Endpoint) error {
	if len(ep.Ports) == 0 {
		return nil
	}
	// Without its network's record the rules cannot be named; they are then
	// orphans by their tag, which Repair removes.
	var rules []rule
	n, err := load[Network](d.store, networkKey(ep.NetworkID))
	switch {
	case err == nil:
		rules = endpointPortRules(n, ep)
	case !errors.Is(err, errNoRecord):
		return fmt.Errorf("network %s: %w", short(ep.NetworkID, 12), err)
	}
	// Record first: a rule left by a crash after it is an orphan that
	// Repair removes.
	ports := ep.Ports
	ep.Ports = nil
	if err := save(d.store, endpointKey(ep.NetworkID, ep.ID), ep); err != nil {
		return fmt.Errorf("record unpublished ports: %w", err)
	}
	if err := d.fw.remove(rules, false); err != nil {
		return fmt.Errorf("unpublish ports: %w", err)
	}
	d.portsMu.Lock()
	d.reserved[ep.ID].release()
	delete(d.reserved, ep.ID)
	d.portsMu.Unlock()
	for _, b := range ports {
		d.log.Info("unpublished", "network", short(ep.NetworkID, 12), "endpoint", short(ep.ID, 12), "port", b.String())
	}
	return nil
}

// endpointPortRules is every rule of the endpoint's published ports, each
// once: two host ports for one container port share the rules that name
// only the container's side, and Repair's count of the chains' rules
// must match the kernel's (where a rule is never in twice).
func endpointPortRules(n *Network, ep *Endpoint) []rule {
	var rs []rule
	for _, b := range ep.Ports {
		for _, r := range portRules(n, ep, b) {
			if !slices.ContainsFunc(rs, func(x rule) bool { return x.chain == r.chain && slices.Equal(x.spec, r.spec) }) {
				rs = append(rs, r)
			}
		}
	}
	return rs
}
