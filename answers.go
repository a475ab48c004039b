package main

// The JSON the operator's commands and the daemon exchange over the
// plugin's own paths (plugin.StatePath, ListPath, …).

import (
	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/ipam"
)

// Snapshot is the JSON answer of plugin.StatePath.
type Snapshot struct {
	driver.State
	Pools []ipam.Pool
	// OverlayConflicts: the cluster's overlays that have no instance on
	// this host, and removed ones whose instance dockerd keeps here, and
	// why (a name taken here by another network, …).
	OverlayConflicts map[string]string `json:",omitempty"`
	// BlockConflicts: address blocks another host holds while containers
	// here use addresses in them (ipam.CheckBlocks).
	BlockConflicts []ipam.BlockConflict `json:",omitempty"`
}

// peersAnswer: Cluster is false on a host without Consul (no peers, not
// an error).
type peersAnswer struct {
	Cluster bool
	Peers   []driver.PeerStatus
}

type doctorRequest struct{ Targets []string }

type doctorAnswer struct{ Checks []driver.Check }

type forgetRequest struct{ Host string }

type forgetAnswer struct{ Blocks int }
