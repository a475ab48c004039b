//go:build lab

package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	overlaydev "github.com/vxbridge/vxbridge/overlay"
)

// The operator's commands across the three hosts: peers (three, with
// complete entries), ls of an overlay, doctor naming an FDB entry deleted
// on one host (and only there), forget-host's refusals.

var cliBin string

// cli runs the vxbridge CLI against host h's plugin and dockerd; it
// returns the output and the exit status.
func (h host) cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	if cliBin == "" {
		bin := filepath.Join(t.TempDir(), "vxbridge")
		if out, err := exec.Command("go", "build", "-o", bin, "../..").CombinedOutput(); err != nil {
			t.Fatalf("build the CLI: %v\n%s", err, out)
		}
		cliBin = bin
		t.Cleanup(func() { cliBin = "" }) // the folder goes with the test
	}
	socks, _ := filepath.Glob(filepath.Join(h.dir, "run-docker", "plugins", "*", "vxbridge.sock"))
	if len(socks) != 1 {
		t.Fatalf("host %s: want one plugin socket, found %v", h.name, socks)
	}
	// The socket's full path is too long for a unix address: dial it
	// relative to its folder.
	cmd := exec.Command(cliBin, append(args[:1:1], append([]string{"--socket", filepath.Base(socks[0])}, args[1:]...)...)...)
	cmd.Dir = filepath.Dir(socks[0])
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+h.dockerHost)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("vxbridge %s: %v", strings.Join(args, " "), err)
	return "", 0
}

type peerStatus struct {
	Host      string
	VTEP      string
	Self      bool
	Endpoints map[string]int
	Missing   []string
	Complete  bool
}

func (h host) peers(t *testing.T) []peerStatus {
	t.Helper()
	out, code := h.cli(t, "peers", "--json")
	var a struct {
		Cluster bool
		Peers   []peerStatus
	}
	if err := json.Unmarshal([]byte(out), &a); err != nil || code != 0 || !a.Cluster {
		t.Fatalf("host %s: vxbridge peers --json: exit %d, %v\n%s", h.name, code, err, out)
	}
	return a.Peers
}

func failedChecks(out string) []string {
	var fs []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "✘") {
			fs = append(fs, l)
		}
	}
	return fs
}

func TestUpOperatorCommands(t *testing.T) {
	needLab(t)
	a, b, c := hosts[0], hosts[1], hosts[2]
	const nw = "opsdemo"
	overlay(t, a, nw, "--subnet", "10.211.0.0/24")
	ips := map[string]string{}
	for _, h := range hosts {
		name := "ops" + strings.ToLower(h.name)
		h.docker(t, "run", "-d", "--name", name, "--network", nw, image, "sleep", "600")
		t.Cleanup(func() { run("docker", "-H", h.dockerHost, "rm", "-f", name) })
		ips[h.name] = h.ipOf(t, name, nw)
	}
	if !a.canPing("opsa", ips["B"]) || !a.canPing("opsa", ips["C"]) {
		t.Fatalf("opsa on A cannot reach B and C")
	}

	// peers: every host sees three, its own entries for the two others
	// complete, one endpoint each on the overlay.
	names := map[string]string{} // lab host → cluster host name
	vteps := map[string]string{}
	for _, h := range hosts {
		ps := h.peers(t)
		if len(ps) != 3 {
			t.Fatalf("host %s: vxbridge peers lists %d hosts, want 3: %+v", h.name, len(ps), ps)
		}
		for _, p := range ps {
			if p.Self {
				names[h.name], vteps[h.name] = p.Host, p.VTEP
				continue
			}
			if !p.Complete || p.Endpoints[nw] != 1 {
				t.Fatalf("host %s: peer %+v: want complete entries and 1 endpoint on %s", h.name, p, nw)
			}
		}
		if vteps[h.name] != h.underlay.String() {
			t.Fatalf("host %s: its own tunnel address %q, want %s", h.name, vteps[h.name], h.underlay)
		}
		out, _ := h.cli(t, "peers")
		t.Logf("host %s: vxbridge peers:\n%s", h.name, out)
	}

	// ls on A: the overlay with its VNI, MTU, and endpoints here and
	// cluster-wide.
	out, code := a.cli(t, "ls", "--json")
	var list []struct {
		Name, Overlay                    string
		VNI                              uint32
		MTU, Endpoints, ClusterEndpoints int
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || code != 0 {
		t.Fatalf("vxbridge ls --json on A: exit %d, %v\n%s", code, err, out)
	}
	var vni uint32
	for _, n := range list {
		if n.Overlay == nw {
			vni = n.VNI
			if n.Name != nw || n.VNI == 0 || n.MTU != 1450 || n.Endpoints != 1 || n.ClusterEndpoints != 3 {
				t.Fatalf("ls on A shows %+v, want name %s, a VNI, MTU 1450, 1 endpoint here and 3 in the cluster", n, nw)
			}
		}
	}
	if vni == 0 {
		t.Fatalf("ls on A lacks overlay %s:\n%s", nw, out)
	}
	out, _ = a.cli(t, "ls")
	t.Logf("vxbridge ls on A:\n%s", out)

	// doctor: all well from A's container to B's (remote, by address).
	for _, h := range hosts {
		if out, code := h.cli(t, "doctor"); code != 0 {
			t.Fatalf("host %s: doctor on a healthy lab: exit %d\n%s", h.name, code, out)
		}
	}
	if out, code := a.cli(t, "doctor", "opsa", ips["B"]); code != 0 {
		t.Fatalf("doctor opsa %s on A: exit %d\n%s", ips["B"], code, out)
	}

	// An FDB entry deleted on A: the one for B's container.
	mac := b.docker(t, "inspect", "-f", `{{(index .NetworkSettings.Networks "`+nw+`").MacAddress}}`, "opsb")
	dev := overlaydev.DeviceName(vni)
	fdb := []string{"ip", "netns", "exec", a.netns, "bridge", "fdb"}
	entry := []string{mac, "dev", dev, "dst", b.underlay.String(), "self"}
	fdbGone := func() bool {
		out, _ := run(append(fdb, "show", "dev", dev)...)
		return !strings.Contains(out, mac)
	}
	restore := func() {
		if fdbGone() {
			run(append(append(fdb, "append"), append(entry, "permanent")...)...)
		}
	}
	t.Cleanup(restore)
	whileBroken(t, "B's FDB entry on A", func() {
		if out, err := run(append(append(fdb, "del"), entry...)...); err != nil {
			t.Fatalf("delete A's FDB entry for %s on %s: %v\n%s", mac, dev, err, out)
		}
	}, fdbGone, func() error {
		for _, args := range [][]string{{"doctor", "opsa", ips["B"]}, {"doctor"}} {
			out, code := a.cli(t, args...)
			fs := failedChecks(out)
			if code != 1 || len(fs) != 1 || !strings.Contains(fs[0], "FDB") || !strings.Contains(out, "fdb "+mac) {
				return fmt.Errorf("A: vxbridge %s with B's FDB entry deleted: exit %d, failed %q; want exit 1 and one check naming it:\n%s", strings.Join(args, " "), code, fs, out)
			}
			t.Logf("A: vxbridge %s with B's FDB entry deleted:\n%s", strings.Join(args, " "), out)
		}
		for _, p := range a.peers(t) {
			if want := p.Host != names["B"]; p.Complete != want && !p.Self {
				return fmt.Errorf("A: peers with B's FDB entry deleted: %+v (complete: want %v)", p, want)
			}
		}
		return nil
	})
	for _, h := range []host{b, c} {
		if out, code := h.cli(t, "doctor"); code != 0 {
			t.Fatalf("host %s: doctor with an entry deleted on A only: exit %d\n%s", h.name, code, out)
		}
	}
	restore()
	if out, code := a.cli(t, "doctor", "opsa", ips["B"]); code != 0 {
		t.Fatalf("doctor on A once the entry is back: exit %d\n%s", code, out)
	}

	// The fast path's filters gone from opsa's veth on A: traffic to B and
	// C takes the bridge, and doctor says so; `vxbridge reconcile` sets
	// them again.
	veth := a.hostVeth(t, "opsa")
	filters := []string{"ip", "netns", "exec", a.netns, "tc", "filter"}
	whileBroken(t, "the fast path of opsa on A", func() {
		if out, err := run(append(filters, "del", "dev", veth, "ingress")...); err != nil {
			t.Fatalf("delete the filters on %s: %v\n%s", veth, err, out)
		}
	}, func() bool {
		out, _ := run(append(filters, "show", "dev", veth, "ingress")...)
		return !strings.Contains(out, "mirred")
	}, func() error {
		out, code := a.cli(t, "doctor", "opsa", ips["B"])
		fs := failedChecks(out)
		if code != 1 || len(fs) != 1 || !strings.Contains(fs[0], "fast-path") || !strings.Contains(out, "2 missing") {
			return fmt.Errorf("A: doctor with opsa's filters deleted: exit %d, failed %q; want exit 1 and one check naming 2 missing filters:\n%s", code, fs, out)
		}
		t.Logf("A: doctor with opsa's filters deleted:\n%s", out)
		return nil
	})
	if out, code := a.cli(t, "reconcile"); code != 0 {
		t.Fatalf("vxbridge reconcile on A: exit %d\n%s", code, out)
	}
	if out, code := a.cli(t, "doctor"); code != 0 {
		t.Fatalf("doctor on A after reconcile: exit %d\n%s", code, out)
	}

	// forget-host refuses this host and a live one; a dead (unknown) one
	// has no blocks to give back.
	if out, code := a.cli(t, "forget-host", names["A"]); code != 1 || !strings.Contains(out, "is this host") {
		t.Fatalf("forget-host of A on A: exit %d\n%s", code, out)
	}
	if out, code := a.cli(t, "forget-host", names["B"]); code != 1 || !strings.Contains(out, "is alive") {
		t.Fatalf("forget-host of live B on A: exit %d\n%s", code, out)
	}
	if out, code := a.cli(t, "forget-host", "ghost"); code != 0 || !strings.Contains(out, "0 address block") {
		t.Fatalf("forget-host of an unknown host: exit %d\n%s", code, out)
	}
}

// whileBroken breaks something on purpose (brk) and runs check while it
// stays broken: the periodic reconcile pass (every minute) may mend it in
// between, and then check's view proves nothing either way. So when
// broken no longer holds after check, it breaks it again (three tries).
func whileBroken(t *testing.T, what string, brk func(), broken func() bool, check func() error) {
	t.Helper()
	for try := 1; ; try++ {
		brk()
		err := check()
		if broken() {
			if err != nil {
				t.Fatal(err)
			}
			return
		}
		if try == 3 {
			t.Fatalf("%s was mended before each check ended: it proves nothing", what)
		}
		t.Logf("%s was mended meanwhile (a reconcile pass?): breaking it again", what)
	}
}

// A peer's plugin stopped: once its session expires, its containers are
// gone from the cluster, peers lists two hosts, and doctor from A says
// the address is known nowhere alive, pointing at a stopped plugin.
func TestUpDoctorPeerStopped(t *testing.T) {
	needLab(t)
	a, b := hosts[0], hosts[1]
	const nw = "opsstop"
	overlay(t, a, nw, "--subnet", "10.212.0.0/24")
	for _, h := range []host{a, b} {
		name := "stop" + strings.ToLower(h.name)
		h.docker(t, "run", "-d", "--name", name, "--network", nw, image, "sleep", "600")
		t.Cleanup(func() { run("docker", "-H", h.dockerHost, "rm", "-f", name) })
	}
	ipB := b.ipOf(t, "stopb", nw)
	if !a.canPing("stopa", ipB) {
		t.Fatalf("stopa on A cannot reach %s on B", ipB)
	}
	if out, code := a.cli(t, "doctor", "stopa", ipB); code != 0 {
		t.Fatalf("doctor stopa %s on A: exit %d\n%s", ipB, code, out)
	}

	nameB := ""
	for _, p := range b.peers(t) {
		if p.Self {
			nameB = p.Host
		}
	}
	// Where the other plugins log (dockerd's log takes a managed
	// plugin's output): only what is written from now on counts.
	logs := map[string]int64{}
	for _, h := range []host{a, hosts[2]} {
		if fi, err := os.Stat(h.pluginLog()); err == nil {
			logs[h.name] = fi.Size()
		}
	}
	b.docker(t, "plugin", "disable", "-f", driver)
	enabled := false
	enable := func() {
		if !enabled {
			run("docker", "-H", b.dockerHost, "plugin", "enable", driver)
			enabled = true
		}
	}
	t.Cleanup(enable)
	took := waitUntil(t, 90*time.Second, "B's session to expire", func() bool { return len(a.peers(t)) == 2 })
	t.Logf("B's session expired %v after its plugin stopped", took)
	out, code := a.cli(t, "doctor", "stopa", ipB)
	fs := failedChecks(out)
	if code != 1 || len(fs) != 1 || !strings.Contains(fs[0], ipB) || !strings.Contains(out, "plugin is stopped") {
		t.Fatalf("doctor on A with B's plugin stopped: exit %d, failed %q; want exit 1 and one check naming %s:\n%s", code, fs, ipB, out)
	}
	t.Logf("doctor on A with B's plugin stopped:\n%s", out)

	// A and C each warned once, naming B and what to do.
	for _, h := range []host{a, hosts[2]} {
		var gone []string
		waitUntil(t, 10*time.Second, "host "+h.name+"'s plugin to log B gone", func() bool {
			gone = h.pluginLogLines(t, logs[h.name], "peer host gone")
			return len(gone) > 0
		})
		if len(gone) != 1 || !strings.Contains(gone[0], "level=WARN") || !strings.Contains(gone[0], "forget-host "+nameB) {
			t.Fatalf("host %s: want one warning that B (%s) is gone, with what to do; got %q", h.name, nameB, gone)
		}
		t.Logf("host %s logged: %s", h.name, gone[0])
	}

	enable()
	waitUntil(t, 90*time.Second, "B back in the cluster", func() bool { return len(a.peers(t)) == 3 })
	waitUntil(t, 10*time.Second, "A's plugin to log B back", func() bool {
		return len(a.pluginLogLines(t, logs[a.name], "peer host joined")) > 0
	})
	waitUntil(t, 30*time.Second, "doctor on A all well again", func() bool {
		_, code := a.cli(t, "doctor", "stopa", ipB)
		return code == 0
	})
}

// pluginLog is the file the host's managed plugin logs to: its dockerd's
// log (dockerd takes a managed plugin's output).
func (h host) pluginLog() string {
	return filepath.Join(labRoot, "logs", "dockerd-"+strings.ToLower(h.name)+".log")
}

// pluginLogLines returns the plugin's log lines written past offset that
// contain what.
func (h host) pluginLogLines(t *testing.T, offset int64, what string) []string {
	t.Helper()
	f, err := os.Open(h.pluginLog())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return out
}

// metric reads one sample (name with its labels, as exposed) from host h's
// plugin metrics; -1 when absent.
func (h host) metric(t *testing.T, name string) float64 {
	t.Helper()
	if h.metrics == "" {
		t.Fatal("the lab gives no METRICS_URL (scripts/lab.sh env): the plugin serves no metrics")
	}
	resp, err := h.client().Get(h.metrics)
	if err != nil {
		t.Fatalf("host %s: GET %s: %v", h.name, h.metrics, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("host %s: metric %q: %v", h.name, l, err)
			}
			return f
		}
	}
	return -1
}

// Containers started on B: A's convergence-lag histogram (advertised on B
// → programmed on A; one machine, so one clock) counts each of them, with
// a sane time.
func TestUpConvergenceMetric(t *testing.T) {
	needLab(t)
	a, b := hosts[0], hosts[1]
	const nw, n = "opslag", 4
	overlay(t, a, nw, "--subnet", "10.219.0.0/24")
	const lag, prog = "vxbridge_overlay_convergence_seconds", "vxbridge_overlay_programming_seconds"
	count0, sum0, progCount0 := max(0, a.metric(t, lag+"_count")), max(0, a.metric(t, lag+"_sum")), max(0, a.metric(t, prog+"_count"))
	for i := range n {
		b.container(t, fmt.Sprintf("lag%d", i), nw)
	}
	waitUntil(t, 10*time.Second, fmt.Sprintf("A's %s_count to grow by %d", lag, n), func() bool {
		return a.metric(t, lag+"_count") >= count0+n
	})
	count, sum := a.metric(t, lag+"_count")-count0, a.metric(t, lag+"_sum")-sum0
	mean := sum / count
	if count != n || mean <= 0 || mean > 2 {
		t.Fatalf("A observed %v endpoints in %.3f s (mean %.4f s); want %d, each within 0–2 s", count, sum, mean, n)
	}
	if p := a.metric(t, prog+"_count") - progCount0; p != n {
		t.Fatalf("A's %s_count grew by %v, want %d", prog, p, n)
	}
	t.Logf("A programmed B's %d containers %.1f ms (mean) after B advertised them", n, 1000*mean)
}

// A host removed with forget-host that comes back with its state: its
// container's address, taken meanwhile by another host, is reported as a
// conflict (`vxbridge state`) until that container is gone.
func TestUpForgottenHostComesBack(t *testing.T) {
	needLab(t)
	a, b := hosts[0], hosts[1]
	const nw = "opsforget"
	overlay(t, a, nw, "--subnet", "10.219.0.0/24")
	b.docker(t, "run", "-d", "--name", "forgetb", "--network", nw, image, "sleep", "600")
	t.Cleanup(func() { run("docker", "-H", b.dockerHost, "rm", "-f", "forgetb") })
	ipB := b.ipOf(t, "forgetb", nw)
	var nameA, nameB string
	for _, p := range a.peers(t) {
		if p.Self {
			nameA = p.Host
		}
	}
	for _, p := range b.peers(t) {
		if p.Self {
			nameB = p.Host
		}
	}

	b.docker(t, "plugin", "disable", "-f", driver)
	t.Cleanup(func() { run("docker", "-H", b.dockerHost, "plugin", "enable", driver) })
	waitUntil(t, 90*time.Second, "B's session to expire", func() bool { return len(a.peers(t)) == 2 })
	if out, code := a.cli(t, "forget-host", nameB); code != 0 || !strings.Contains(out, "1 address block") {
		t.Fatalf("forget-host %s on A: exit %d\n%s", nameB, code, out)
	}
	// A takes B's block, and with it the address B's container has.
	a.docker(t, "run", "-d", "--name", "forgeta", "--network", nw, "--ip", ipB, image, "sleep", "600")
	t.Cleanup(func() { run("docker", "-H", a.dockerHost, "rm", "-f", "forgeta") })

	b.docker(t, "plugin", "enable", driver)
	type conflict struct {
		Block     string
		Holder    string
		Addresses []string
	}
	conflicts := func() []conflict {
		time.Sleep(500 * time.Millisecond) // polled: a CLI run each
		out, code := b.cli(t, "state")
		var s struct{ BlockConflicts []conflict }
		if err := json.Unmarshal([]byte(out), &s); err != nil || code != 0 {
			t.Fatalf("vxbridge state on B: exit %d, %v\n%s", code, err, out)
		}
		return s.BlockConflicts
	}
	waitUntil(t, 60*time.Second, "B to report its address held by A", func() bool {
		cs := conflicts()
		return len(cs) == 1 && cs[0].Holder == nameA && len(cs[0].Addresses) == 1 && cs[0].Addresses[0] == ipB
	})
	t.Logf("B reports: %+v", conflicts())
	// Resolved once B's container is gone (checked again every minute).
	b.docker(t, "rm", "-f", "forgetb")
	took := waitUntil(t, 90*time.Second, "B's conflict to clear", func() bool { return len(conflicts()) == 0 })
	t.Logf("conflict cleared %v after the container went", took)
}
