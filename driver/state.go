package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/vxbridge/vxbridge/store"
)

// Network is the persisted record of one vxbridge network: everything
// needed to rebuild its bridge and rules after a reboot.
type Network struct {
	ID       string
	Options  netOptions
	Gateway4 netip.Prefix `json:",omitempty"`
	Gateway6 netip.Prefix `json:",omitempty"`
	// VNI of an overlay network, as the cluster chose it.
	VNI uint32 `json:",omitempty"`
}

// Endpoint is the persisted record of one veth pair.
type Endpoint struct {
	ID        string
	NetworkID string
	HostIf    string
	PeerIf    string
	MAC       string
	Addr4     netip.Prefix `json:",omitempty"`
	Addr6     netip.Prefix `json:",omitempty"`
	// Ports are the published ports as programmed (host ports chosen).
	Ports []PortBinding `json:",omitempty"`
	// ResolverRoute is the sandbox (container) this endpoint's Join gave
	// the route to the resolver (internal overlays only; see Join).
	ResolverRoute string `json:",omitempty"`
}

const (
	networkKeys  = "driver/networks/"
	endpointKeys = "driver/endpoints/"
)

func networkKey(id string) string        { return networkKeys + id }
func endpointKey(nid, eid string) string { return endpointKeys + nid + "/" + eid }

// errNoRecord marks a lookup of a network or endpoint vxbridge never made.
var errNoRecord = errors.New("not found")

func load[T any](s store.Store, key string) (*T, error) {
	b, err := s.Get(key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNoRecord
	}
	if err != nil {
		return nil, err
	}
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("decode %s: %w", key, err)
	}
	return v, nil
}

func loadAll[T any](s store.Store, prefix string) ([]*T, error) {
	kv, err := s.List(prefix)
	if err != nil {
		return nil, err
	}
	out := make([]*T, 0, len(kv))
	for k, b := range kv {
		v := new(T)
		if err := json.Unmarshal(b, v); err != nil {
			return nil, fmt.Errorf("decode %s: %w", k, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// create stores v under key, failing if the key exists: a record is the
// claim on a name, so two requests never both own one.
func create(s store.Store, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.Update(key, func(old []byte) ([]byte, error) {
		if old != nil {
			return nil, fmt.Errorf("%s already exists", key)
		}
		return b, nil
	})
}

// save overwrites the record under key.
func save(s store.Store, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.Update(key, func([]byte) ([]byte, error) { return b, nil })
}

func remove(s store.Store, key string) error {
	return s.Update(key, func([]byte) ([]byte, error) { return nil, nil })
}

// State is everything the driver has recorded, for `vxbridge state`.
type State struct {
	Networks  []*Network
	Endpoints []*Endpoint
	// Broken: the networks the last repair could not bring in line.
	Broken []Problem `json:",omitempty"`
}

// State reads the driver's records.
func (d *Driver) State() (State, error) {
	nets, err := loadAll[Network](d.store, networkKeys)
	if err != nil {
		return State{}, err
	}
	eps, err := loadAll[Endpoint](d.store, endpointKeys)
	d.mu.RLock()
	var broken []Problem
	for id, why := range d.broken {
		broken = append(broken, Problem{Network: id, Err: why})
	}
	d.mu.RUnlock()
	slices.SortFunc(broken, func(a, b Problem) int { return strings.Compare(a.Network, b.Network) })
	// Stable order, so two snapshots compare equal when nothing changed.
	slices.SortFunc(nets, func(a, b *Network) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(eps, func(a, b *Endpoint) int { return strings.Compare(a.NetworkID+a.ID, b.NetworkID+b.ID) })
	return State{Networks: nets, Endpoints: eps, Broken: broken}, err
}

// loadEndpoint loads an endpoint's record with its network's.
func (d *Driver) loadEndpoint(nid, eid string) (*Network, *Endpoint, error) {
	n, err := load[Network](d.store, networkKey(nid))
	if err != nil {
		return nil, nil, fmt.Errorf("network %s: %w", short(nid, 12), err)
	}
	ep, err := load[Endpoint](d.store, endpointKey(nid, eid))
	if err != nil {
		return nil, nil, fmt.Errorf("endpoint %s: %w", short(eid, 12), err)
	}
	return n, ep, nil
}
