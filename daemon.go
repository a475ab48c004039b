package main

// The daemon: `vxbridge serve` wires the store, the IPAM, the driver and
// reconciliation together and serves the plugin's socket (multihost.go
// adds the cluster). The operator's commands ask it over that socket
// (cli.go, cli_ops.go).

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/ipam"
	"github.com/vxbridge/vxbridge/metrics"
	"github.com/vxbridge/vxbridge/overlay"
	"github.com/vxbridge/vxbridge/plugin"
	"github.com/vxbridge/vxbridge/reconcile"
	"github.com/vxbridge/vxbridge/store"
)

// serve runs the plugin until SIGINT or SIGTERM.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	socket := fs.String("socket", filepath.Join(pluginDir, "vxbridge.sock"), "unix socket to serve; its name is the plugin's name for a legacy plugin")
	statePath := fs.String("state", env("VXBRIDGE_STATE", "/var/lib/vxbridge/state.db"), "state file (bbolt) [$VXBRIDGE_STATE]")
	level := fs.String("log-level", env("VXBRIDGE_LOG_LEVEL", "info"), "debug, info, warn or error [$VXBRIDGE_LOG_LEVEL]")
	dockerSocket := fs.String("docker-socket", env("VXBRIDGE_DOCKER_SOCKET", "/run/docker.sock"), "dockerd's API socket, for reconciliation [$VXBRIDGE_DOCKER_SOCKET]")
	every := fs.Duration("reconcile-interval", envDuration("VXBRIDGE_RECONCILE_INTERVAL", time.Minute), "how often to reconcile with dockerd [$VXBRIDGE_RECONCILE_INTERVAL]")
	fs.Parse(args)

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("log level %q: %w", *level, err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	var st store.Store
	bolt, err := store.OpenBolt(*statePath)
	switch {
	case errors.Is(err, store.ErrLocked):
		// Another plugin serves this state (and its socket): leave both.
		return err
	case err != nil:
		// Serve anyway, answering every request with the reason: an exit
		// would leave dockerd only "connection refused" to show, and a
		// managed plugin's leftover shim blocks every later enable.
		log.Error("state unusable: every request will fail until it is fixed", "err", err)
		st = store.Failed{Err: err}
	default:
		st = bolt
	}
	defer st.Close()
	cs, err := clusterStore(log)
	if err != nil {
		return err
	}
	host := hostName()
	cfg := ipam.Config{
		Spaces:       map[string]store.Store{ipam.LocalSpace: st, ipam.GlobalSpace: st},
		HostPrefixes: driver.HostPrefixes,
		Host:         host,
	}
	if cs != nil {
		defer cs.Close()
		cfg.Cluster = cs
	}
	alloc, err := ipam.New(cfg)
	if err != nil {
		return err
	}
	drv, err := driver.New(st, log)
	if err != nil {
		return err
	}
	name := strings.TrimSuffix(filepath.Base(*socket), ".sock")
	docker := reconcile.NewDocker(*dockerSocket)
	rec := reconcile.New(drv, alloc, docker, name, log)
	ovs := rec.NewOverlays(host)
	own := opsRoutes(drv)
	own[plugin.StatePath] = func(json.RawMessage) (any, error) { return snapshot(drv, alloc, ovs) }
	own[plugin.ReconcilePath] = func(json.RawMessage) (any, error) { return rec.Now(context.Background(), onDemandGrace), nil }
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var observe plugin.Observer
	var programmed overlay.Observer
	if addr := os.Getenv("VXBRIDGE_METRICS_ADDR"); addr != "" {
		m := metrics.New(metrics.Sources{Pools: alloc.Pools, Peers: drv.Peers})
		if _, err := m.Serve(ctx, addr, log); err != nil {
			return err
		}
		observe, programmed = m.Observe, m.Programmed
	}
	h := plugin.NewHandler(drv, alloc, own, log, observe)
	if cs != nil {
		// Bounded here, so overlays are repaired at start when Consul
		// answers; the rest retries in the background.
		joined := make(chan struct{})
		go func() {
			joinCluster(ctx, log, cs, st, host, drv, alloc, ovs, docker, programmed)
			close(joined)
		}()
		select {
		case <-joined:
		case <-time.After(5 * time.Second):
		}
	}
	// Before serving: adopt what dockerd has and the records lost, then
	// bring the kernel in line (see reconcile.Start).
	startRep, viewed := rec.Start(ctx)
	log.Info("driver ready", "networks", startRep.Kernel.Networks, "published ports", startRep.Kernel.PublishedPorts,
		"adopted networks", startRep.AdoptedNetworks, "adopted endpoints", startRep.AdoptedEndpoints, "adopted pools", startRep.AdoptedPools,
		"dockerd", cmp.Or(startRep.Docker, "answered"))

	if err := os.MkdirAll(filepath.Dir(*socket), 0o755); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	os.Remove(*socket) // a stale socket from a killed run blocks listen
	l, err := net.Listen("unix", *socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *socket, err)
	}
	// dockerd runs as root; nobody else may drive the plugin.
	if err := os.Chmod(*socket, 0o600); err != nil {
		return fmt.Errorf("chmod %s: %w", *socket, err)
	}
	go rec.Run(ctx, *every, viewed)
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	log.Info("serving", "socket", *socket, "state", *statePath)
	if err := plugin.Serve(l, h); err != nil && ctx.Err() == nil {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("stopped")
	return nil
}

// onDemandGrace is how long `vxbridge reconcile` lets an object stay
// unowned before removing it: long enough for a container or network half
// way through creation to show up in dockerd.
const onDemandGrace = 3 * time.Second

func envDuration(key string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(key)); err == nil && d > 0 {
		return d
	}
	return def
}

func snapshot(d *driver.Driver, a *ipam.Allocator, ovs *reconcile.Overlays) (any, error) {
	s, err := d.State()
	if err != nil {
		return nil, err
	}
	pools, err := a.Pools()
	return Snapshot{State: s, Pools: pools, OverlayConflicts: ovs.Conflicts(), BlockConflicts: a.BlockConflicts()}, err
}

// opsRoutes are the daemon's side of the operator's commands (cli_ops.go).
func opsRoutes(drv *driver.Driver) map[string]plugin.Own {
	return map[string]plugin.Own{
		plugin.ListPath: func(json.RawMessage) (any, error) { return drv.List() },
		plugin.PeersPath: func(json.RawMessage) (any, error) {
			ps, err := drv.Peers(context.Background())
			if errors.Is(err, driver.ErrNoCluster) {
				return peersAnswer{}, nil
			}
			return peersAnswer{Cluster: true, Peers: ps}, err
		},
		plugin.DoctorPath: func(body json.RawMessage) (any, error) {
			var req doctorRequest
			if err := json.Unmarshal(body, &req); err != nil {
				return nil, fmt.Errorf("doctor request: %w", err)
			}
			cs, err := drv.Doctor(context.Background(), req.Targets)
			return doctorAnswer{Checks: cs}, err
		},
		plugin.ForgetHostPath: func(body json.RawMessage) (any, error) {
			var req forgetRequest
			if err := json.Unmarshal(body, &req); err != nil {
				return nil, fmt.Errorf("forget-host request: %w", err)
			}
			n, err := drv.ForgetHost(req.Host)
			return forgetAnswer{Blocks: n}, err
		},
	}
}
