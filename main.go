// Command vxbridge is a Docker network and IPAM plugin: Linux bridges on one
// host, with state that survives restarts.
//
//	vxbridge serve   run the plugin (managed plugin entrypoint, or a plain daemon)
//	vxbridge state   print what a running plugin holds
//	vxbridge ports   list published ports (docker ps cannot show a remote driver's)
//	vxbridge reconcile  clean up now what dockerd removed while the plugin was down
//	vxbridge ls, peers, doctor, forget-host  operator commands (cli_ops.go)
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/ipam"
	"github.com/vxbridge/vxbridge/metrics"
	"github.com/vxbridge/vxbridge/overlay"
	"github.com/vxbridge/vxbridge/plugin"
	"github.com/vxbridge/vxbridge/reconcile"
	"github.com/vxbridge/vxbridge/store"
)

// pluginDir is where dockerd looks for legacy plugin sockets; a managed
// plugin sees its own private folder mounted at the same path.
const pluginDir = "/run/docker/plugins"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "state":
		err = state(os.Args[2:])
	case "ports":
		err = ports(os.Args[2:])
	case "reconcile":
		err = reconcileNow(os.Args[2:])
	default:
		cmd, ok := opsCommands[os.Args[1]]
		if !ok {
			usage()
		}
		err = cmd(os.Args[2:])
	}
	exit(err)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: vxbridge serve|state|ports|reconcile|ls|peers|doctor|forget-host [flags] [args]  (-h for flags)")
	os.Exit(2)
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

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

// Snapshot is the JSON answer of plugin.StatePath.
type Snapshot struct {
	driver.State
	Pools []ipam.Pool
	// OverlayConflicts: the cluster's overlays that have no instance on
	// this host, and why (a name taken here by another network, …).
	OverlayConflicts map[string]string `json:",omitempty"`
}

func snapshot(d *driver.Driver, a *ipam.Allocator, ovs *reconcile.Overlays) (any, error) {
	s, err := d.State()
	if err != nil {
		return nil, err
	}
	pools, err := a.Pools()
	return Snapshot{State: s, Pools: pools, OverlayConflicts: ovs.Conflicts()}, err
}

func state(args []string) error {
	return printJSON(args, plugin.StatePath)
}

// reconcileNow prints the report and fails when something could not be
// reconciled (a broken network, a failed step), saying what.
func reconcileNow(args []string) error {
	body, err := ask(args, plugin.ReconcilePath)
	if err != nil {
		return err
	}
	if err := printBody(body); err != nil {
		return err
	}
	var rep reconcile.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		return fmt.Errorf("decode report: %w", err)
	}
	var why []string
	for _, p := range rep.Kernel.Broken {
		why = append(why, fmt.Sprintf("network %s: %s", p.Network[:min(12, len(p.Network))], p.Err))
	}
	why = append(why, rep.Errors...)
	if len(why) > 0 {
		return fmt.Errorf("not everything could be reconciled:\n  %s", strings.Join(why, "\n  "))
	}
	return nil
}

// printJSON asks the plugin for one of its own paths and prints the answer.
func printJSON(args []string, path string) error {
	body, err := ask(args, path)
	if err != nil {
		return err
	}
	return printBody(body)
}

func printBody(body []byte) error {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	fmt.Println(string(out))
	return nil
}

// ports prints every published port with its container's and network's
// names, which it asks dockerd for (the plugin never hears them).
func ports(args []string) error {
	body, err := ask(args, plugin.StatePath)
	if err != nil {
		return err
	}
	var s Snapshot
	if err := json.Unmarshal(body, &s); err != nil {
		return fmt.Errorf("decode state: %w", err)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CONTAINER\tNETWORK\tADDRESS\tPORTS")
	names := map[string]reconcile.Network{}
	for _, ep := range s.Endpoints {
		if len(ep.Ports) == 0 {
			continue
		}
		n, ok := names[ep.NetworkID]
		if !ok {
			n = inspectNetwork(ep.NetworkID)
			names[ep.NetworkID] = n
		}
		container := ep.ID[:min(12, len(ep.ID))]
		for _, c := range n.Containers {
			if c.EndpointID == ep.ID {
				container = c.Name
			}
		}
		var ps []string
		for _, b := range ep.Ports {
			ps = append(ps, b.String())
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", container, n.Name, ep.Addr4.Addr(), strings.Join(ps, ", "))
	}
	return w.Flush()
}

// inspectNetwork asks dockerd (DOCKER_HOST or its default socket) for a
// network's names; without an answer the network ID stands in.
func inspectNetwork(id string) reconcile.Network {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := dockerd().Network(ctx, id)
	if err != nil {
		return reconcile.Network{ID: id, Name: id[:min(12, len(id))]}
	}
	return n
}

// dockerd is the Docker API at DOCKER_HOST (a unix socket) or its default.
func dockerd() *reconcile.Docker {
	return reconcile.NewDocker(strings.TrimPrefix(env("DOCKER_HOST", "unix:///run/docker.sock"), "unix://"))
}

func unixClient(path string) *http.Client {
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
}

// ask calls one of the running plugin's own paths over its socket.
func ask(args []string, path string) ([]byte, error) {
	fs := flag.NewFlagSet(strings.TrimPrefix(path, "/VxBridge."), flag.ExitOnError)
	socket := fs.String("socket", "", "plugin socket (default: the legacy socket, else the managed plugin's)")
	fs.Parse(args)
	return call(*socket, path, struct{}{})
}

// callInto asks the plugin and decodes its JSON answer into v.
func callInto(socket, path string, req, v any) error {
	body, err := call(socket, path, req)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode the answer to %s: %w", path, err)
	}
	return nil
}

// call posts req, as JSON, to one of the plugin's own paths at socket
// ("": found as findSocket does) and returns the answer.
func call(socket, path string, req any) ([]byte, error) {
	sock, err := findSocket(socket)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	res, err := unixClient(sock).Post("http://plugin"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", sock, err)
	}
	defer res.Body.Close()
	answer, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", res.Status, answer)
	}
	return answer, nil
}

// findSocket prefers an explicit path, then the legacy socket, then a
// managed plugin's (dockerd puts it in a folder named by plugin ID).
func findSocket(explicit string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	candidates := []string{filepath.Join(pluginDir, "vxbridge.sock")}
	managed, _ := filepath.Glob(filepath.Join(pluginDir, "*", "vxbridge.sock"))
	for _, p := range append(candidates, managed...) {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no vxbridge socket found; is the plugin running? (give --socket)")
}
