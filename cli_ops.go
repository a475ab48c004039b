package main

// The operator's commands: ls, peers, doctor, forget-host. Each asks the
// running plugin over its socket (call), prints a table or, with --json,
// the answer; a usage error exits 2, a failed doctor check 1.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/plugin"
	"github.com/vxbridge/vxbridge/reconcile"
)

var opsCommands = map[string]func([]string) error{
	"ls":          ls,
	"peers":       peers,
	"doctor":      doctor,
	"forget-host": forgetHost,
}

// opsFlags parses a command's flags (--socket, --json) and checks the
// number of arguments left.
func opsFlags(name, argsUsage string, args []string, minArgs, maxArgs int) (socket string, asJSON bool, rest []string, err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&socket, "socket", "", "plugin socket (default: the legacy socket, else the managed plugin's)")
	fs.BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	usage := fmt.Sprintf("usage: vxbridge %s [--json] [--socket PATH] %s", name, argsUsage)
	if err := fs.Parse(args); err != nil {
		return "", false, nil, usageError{fmt.Errorf("%s: %w\n%s", name, err, usage)}
	}
	if fs.NArg() < minArgs || fs.NArg() > maxArgs {
		return "", false, nil, usageError{fmt.Errorf("%s: wrong number of arguments (%d)\n%s", name, fs.NArg(), usage)}
	}
	return socket, asJSON, fs.Args(), nil
}

type lsEntry struct {
	Name string
	driver.ListEntry
}

func ls(args []string) error {
	socket, asJSON, _, err := opsFlags("ls", "", args, 0, 0)
	if err != nil {
		return err
	}
	var list []driver.ListEntry
	if err := callInto(socket, plugin.ListPath, struct{}{}, &list); err != nil {
		return err
	}
	out := make([]lsEntry, len(list))
	for i, e := range list {
		out[i] = lsEntry{Name: inspectNetwork(e.ID).Name, ListEntry: e}
	}
	if asJSON {
		return printValue(out)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NETWORK ID\tNAME\tKIND\tBRIDGE\tSUBNET\tGATEWAY\tVNI\tMTU\tENDPOINTS\tCLUSTER")
	for _, e := range out {
		kind, vni, cl := "local", "-", "-"
		if e.Overlay != "" {
			kind, vni, cl = "overlay", fmt.Sprint(e.VNI), fmt.Sprint(e.ClusterEndpoints)
			if e.ClusterEndpoints < 0 {
				cl = "?" // Consul did not answer
			}
		}
		if e.Internal {
			kind += ",internal"
		}
		if e.Broken != "" {
			kind += ",BROKEN"
		}
		subnet, gw := join(e.Subnet4, e.Subnet6), join(e.Gateway4, e.Gateway6)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", e.ID[:min(12, len(e.ID))], e.Name, kind, e.Bridge, subnet, gw, vni, e.MTU, e.Endpoints, cl)
	}
	return w.Flush()
}

// join shows an IPv4 and an IPv6 value side by side; "-" for none.
func join[T interface{ IsValid() bool }](v4, v6 T) string {
	var s []string
	for _, v := range []T{v4, v6} {
		if v.IsValid() {
			s = append(s, fmt.Sprint(v))
		}
	}
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

func printValue(v any) error {
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func peers(args []string) error {
	socket, asJSON, _, err := opsFlags("peers", "", args, 0, 0)
	if err != nil {
		return err
	}
	var a peersAnswer
	if err := callInto(socket, plugin.PeersPath, struct{}{}, &a); err != nil {
		return err
	}
	if asJSON {
		return printValue(a)
	}
	if !a.Cluster {
		fmt.Println("this host is in no cluster (the plugin's CONSUL_HTTP_ADDR is not set): no overlay peers")
		return nil
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "HOST\tTUNNEL ADDRESS\tENDPOINTS\tENTRIES HERE")
	for _, p := range a.Peers {
		host, entries := p.Host, "complete"
		if p.Self {
			host += " (this host)"
			entries = "-"
		} else if !p.Complete {
			entries = fmt.Sprintf("%d missing, %d stale", len(p.Missing), len(p.Stale))
		}
		var eps []string
		for ov, n := range p.Endpoints {
			eps = append(eps, fmt.Sprintf("%s:%d", ov, n))
		}
		slices.Sort(eps)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", host, p.VTEP, cmp.Or(strings.Join(eps, " "), "-"), entries)
	}
	return w.Flush()
}

// containerName is what dockerd accepts as a container name or ID.
var containerName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

func doctor(args []string) error {
	socket, asJSON, rest, err := opsFlags("doctor", "[A [B]]  (container names or IDs, or addresses)", args, 0, 2)
	if err != nil {
		return err
	}
	var targets []string
	var containers []containerTarget
	if len(rest) > 0 {
		var list []driver.ListEntry
		if err := callInto(socket, plugin.ListPath, struct{}{}, &list); err != nil {
			return err
		}
		ours := map[string]bool{}
		for _, n := range list {
			ours[n.ID] = true
		}
		for _, a := range rest {
			ts, c, err := resolveTarget(a, ours)
			if err != nil {
				return err
			}
			targets = append(targets, ts...)
			if c != nil {
				containers = append(containers, *c)
			}
		}
	}
	var a doctorAnswer
	if err := callInto(socket, plugin.DoctorPath, doctorRequest{Targets: targets}, &a); err != nil {
		return err
	}
	if len(containers) > 0 {
		// A packet starts inside the container: its side comes first.
		var st driver.State
		if err := callInto(socket, plugin.StatePath, struct{}{}, &st); err != nil {
			return err
		}
		var inside []driver.Check
		for _, c := range containers {
			inside = append(inside, containerChecks(c, st)...)
		}
		a.Checks = append(inside, a.Checks...)
	}
	failed := 0
	for _, c := range a.Checks {
		if !c.OK {
			failed++
		}
	}
	if asJSON {
		if err := printValue(a); err != nil {
			return err
		}
	} else {
		for _, c := range a.Checks {
			if c.OK {
				fmt.Println("✔", c.Name)
			} else {
				fmt.Println("✘", c.Name)
				fmt.Println("   ", c.Fix)
			}
		}
		if failed == 0 {
			fmt.Printf("all %d checks hold\n", len(a.Checks))
		} else {
			fmt.Printf("%d of %d checks failed\n", failed, len(a.Checks))
		}
	}
	if failed > 0 {
		return errChecksFailed
	}
	return nil
}

// resolveTarget turns a doctor argument into what the plugin knows: an
// address stays as it is (it may be a container on another host); a
// container becomes its endpoints on vxbridge networks (ours), found
// through dockerd, and is returned for the checks inside it.
func resolveTarget(a string, ours map[string]bool) ([]string, *containerTarget, error) {
	if _, err := netip.ParseAddr(a); err == nil {
		return []string{a}, nil, nil
	}
	if !containerName.MatchString(a) {
		return nil, nil, usageError{fmt.Errorf("doctor: %q is neither an address nor a container name or ID", a)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dockerd().Container(ctx, a)
	if errors.Is(err, reconcile.ErrNotFound) {
		return nil, nil, usageError{fmt.Errorf("doctor: no container %q here (give a remote container by its address)", a)}
	}
	if err != nil {
		return nil, nil, err
	}
	var ts []string
	for _, n := range c.NetworkSettings.Networks {
		if ours[n.NetworkID] && n.EndpointID != "" {
			ts = append(ts, n.EndpointID)
		}
	}
	if len(ts) == 0 {
		return nil, nil, usageError{fmt.Errorf("doctor: container %q is on no vxbridge network", a)}
	}
	return ts, &containerTarget{name: a, c: c}, nil
}

func forgetHost(args []string) error {
	socket, asJSON, rest, err := opsFlags("forget-host", "NAME", args, 1, 1)
	if err != nil {
		return err
	}
	if rest[0] == "" || strings.Contains(rest[0], "/") {
		return usageError{fmt.Errorf("forget-host: %q is not a host name", rest[0])}
	}
	var a forgetAnswer
	if err := callInto(socket, plugin.ForgetHostPath, forgetRequest{Host: rest[0]}, &a); err != nil {
		return err
	}
	if asJSON {
		return printValue(a)
	}
	fmt.Printf("host %s forgotten: %d address block(s) released\n", rest[0], a.Blocks)
	return nil
}
