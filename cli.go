package main

// The client side: commands that ask the running plugin over its socket
// (state, ports, reconcile here; ls, peers, doctor, forget-host in
// cli_ops.go), all through call, and how the process exits.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vxbridge/vxbridge/plugin"
	"github.com/vxbridge/vxbridge/reconcile"
)

// usageError is a malformed command line: exit status 2.
type usageError struct{ error }

// errChecksFailed: doctor found something wrong (exit status 1).
var errChecksFailed = errors.New("some checks failed")

// exit ends the process with the status err calls for.
func exit(err error) {
	var ue usageError
	switch {
	case err == nil:
		return
	case errors.As(err, &ue):
		fmt.Fprintln(os.Stderr, "vxbridge:", err)
		os.Exit(2)
	case errors.Is(err, errChecksFailed):
		os.Exit(1) // doctor printed why
	}
	fmt.Fprintln(os.Stderr, "vxbridge:", err)
	os.Exit(1)
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
