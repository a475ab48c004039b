//go:build lab

package lab

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Failures across the lab: a host cut off, Consul gone, a plugin killed.
// Each test leaves the lab as it found it (`lab.sh up` repairs).

// fdbHas reports whether host h's kernel forwards mac into the tunnel.
func (h host) fdbHas(mac string) bool {
	out, _ := run("ip", "netns", "exec", h.netns, "bridge", "fdb", "show")
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, mac+" ") && strings.Contains(l, "vxo-") && strings.Contains(l, " dst ") {
			return true
		}
	}
	return false
}

func (h host) macOf(t *testing.T, c, nw string) string {
	t.Helper()
	return h.docker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+nw+"\").MacAddress}}", c)
}

// repairLab brings back whatever a test stopped.
func repairLab(t *testing.T) {
	t.Helper()
	if out, err := run("bash", "../../scripts/lab.sh", "up"); err != nil {
		t.Errorf("lab.sh up after the test: %v\n%s", err, out)
	}
}

// A host cut off from the others (its underlay down): within the session's
// TTL the others drop its endpoints while their own traffic flows; none of
// its addresses is handed out meanwhile; back, it converges and its
// containers are reachable again.
func TestUpOverlayHostCutOff(t *testing.T) {
	needLab(t)
	a, b, c := hosts[0], hosts[1], hosts[2]
	const nw = "ovcut"
	overlay(t, a, nw, "--subnet", "10.214.0.0/24")
	a.container(t, "cuta", nw)
	ipB := b.container(t, "cutb", nw)
	ipC := c.container(t, "cutc", nw)
	macB := b.macOf(t, "cutb", nw)
	if !a.canPing("cuta", ipB) || !a.canPing("cuta", ipC) {
		t.Fatal("no traffic before the cut")
	}

	t.Cleanup(func() {
		run("ip", "-n", b.netns, "link", "set", "eth0", "up")
		repairLab(t)
	})
	cut := time.Now()
	if out, err := run("ip", "-n", b.netns, "link", "set", "eth0", "down"); err != nil {
		t.Fatalf("cut B: %v %s", err, out)
	}
	gone := waitUntil(t, 60*time.Second, "A and C to drop B's endpoint", func() bool { return !a.fdbHas(macB) && !c.fdbHas(macB) })
	t.Logf("B cut off: its endpoint left A's and C's tables after %v", gone)
	if !a.canPing("cuta", ipC) {
		t.Error("A↔C traffic broke while B was cut off")
	}
	// B's addresses stay reserved: new containers on A never get one of
	// B's block.
	for i := 0; i < 3; i++ {
		ip := a.container(t, "cutnew"+strconv.Itoa(i), nw)
		if ip == ipB {
			t.Errorf("B's address %s handed out on A while B was cut off", ipB)
		}
	}

	if out, err := run("ip", "-n", b.netns, "link", "set", "eth0", "up"); err != nil {
		t.Fatalf("reconnect B: %v %s", err, out)
	}
	back := waitUntil(t, 90*time.Second, "B's container reachable from A again", func() bool { return a.canPing("cuta", ipB) })
	t.Logf("B back: reachable from A %v after reconnecting (%v after the cut)", back, time.Since(cut))
}

// All Consul servers stopped: local networks and running overlay traffic
// keep working, an overlay `docker run` fails clearly and leaves nothing;
// Consul back, it works again.
func TestUpOverlayConsulDown(t *testing.T) {
	needLab(t)
	a, c := hosts[0], hosts[2]
	const nw = "ovnocs"
	overlay(t, a, nw, "--subnet", "10.215.0.0/24")
	local := "vxlabt-local-" + strconv.Itoa(os.Getpid())
	a.docker(t, "network", "create", "-d", driver, local)
	t.Cleanup(func() { run("docker", "-H", a.dockerHost, "network", "rm", local) })
	a.container(t, "csa", nw)
	ipC := c.container(t, "csc", nw)
	a.container(t, "csl1", local)
	a.container(t, "csl2", local)

	t.Cleanup(func() { repairLab(t) })
	logs := map[string]int64{} // where each plugin's log is now
	for _, h := range hosts {
		if fi, err := os.Stat(h.pluginLog()); err == nil {
			logs[h.name] = fi.Size()
		}
	}
	for _, h := range hosts {
		b, err := os.ReadFile(filepath.Join(h.dir, "consul.pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(2 * time.Second)
	if !a.canPing("csa", ipC) {
		t.Error("running overlay traffic stopped with Consul")
	}
	if !a.canPing("csl1", a.ipOf(t, "csl2", local)) {
		t.Error("a local network stopped working with Consul")
	}
	out, err := run("docker", "-H", a.dockerHost, "run", "-d", "--name", "csfail", "--network", nw, image, "sleep", "600")
	t.Cleanup(func() { run("docker", "-H", a.dockerHost, "rm", "-f", "csfail") })
	if err == nil {
		t.Fatal("an overlay docker run succeeded with every Consul server down")
	}
	if !strings.Contains(out, "consul") || !strings.Contains(out, "unreachable") {
		t.Errorf("the failed run's error does not say Consul is unreachable: %s", out)
	}
	run("docker", "-H", a.dockerHost, "rm", "-f", "csfail")
	if n := strings.Count(mustState(t, a), `"NetworkID"`); n != 3 { // csa, csl1, csl2
		t.Errorf("after the failed run host A records %d endpoints, want 3", n)
	}
	// Every plugin retried its watches and renewals every second: one
	// warning each for the whole outage.
	for _, h := range hosts {
		if w := h.pluginLogLines(t, logs[h.name], "consul unreachable"); len(w) != 1 || !strings.Contains(w[0], "level=WARN") || !strings.Contains(w[0], "fix:") {
			t.Errorf("host %s: want one warning that Consul is unreachable, got %d: %q", h.name, len(w), w)
		}
	}

	repairLab(t)
	waitUntil(t, 60*time.Second, "an overlay docker run to work again", func() bool {
		_, err := run("docker", "-H", a.dockerHost, "run", "-d", "--name", "csback", "--network", nw, image, "sleep", "600")
		if err != nil {
			run("docker", "-H", a.dockerHost, "rm", "-f", "csback")
		}
		return err == nil
	})
	t.Cleanup(func() { run("docker", "-H", a.dockerHost, "rm", "-f", "csback") })
	for _, h := range hosts {
		waitUntil(t, 10*time.Second, "host "+h.name+"'s plugin to log Consul back", func() bool {
			return len(h.pluginLogLines(t, logs[h.name], "consul reachable again")) > 0
		})
	}
	if !c.canPing("csc", a.ipOf(t, "csback", nw)) {
		t.Error("a container started after Consul came back is not reachable across hosts")
	}
}

// mustState is `vxbridge state` of host h's plugin, read through its socket.
func mustState(t *testing.T, h host) string {
	t.Helper()
	out, err := run("../../bin/vxbridge", "state", "--socket", pluginSocket(t, h))
	if err != nil {
		t.Fatalf("host %s: vxbridge state: %v %s", h.name, err, out)
	}
	return out
}

// pluginSocket is a path to host h's plugin socket short enough to dial
// (the real one is longer than a unix socket address may be).
func pluginSocket(t *testing.T, h host) string {
	t.Helper()
	var socks []string
	waitUntil(t, 30*time.Second, "host "+h.name+"'s plugin socket", func() bool {
		socks, _ = filepath.Glob(filepath.Join(h.dir, "run-docker", "plugins", "*", "vxbridge.sock"))
		return len(socks) == 1
	})
	link := filepath.Join("/tmp", "vxlab-"+h.name+".sock")
	os.Remove(link)
	if err := os.Symlink(socks[0], link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })
	return link
}

// The plugin on B killed (-9) while A pings B's container: dockerd
// restarts it, it resumes its session, and no ping is lost.
func TestUpOverlayPluginKillLosesNoPacket(t *testing.T) {
	needLab(t)
	a, b := hosts[0], hosts[1]
	const nw = "ovkill"
	overlay(t, a, nw, "--subnet", "10.216.0.0/24")
	a.container(t, "kla", nw)
	ipB := b.container(t, "klb", nw)
	macB := b.macOf(t, "klb", nw)

	done := make(chan string, 1)
	go func() {
		out, _ := run("docker", "-H", a.dockerHost, "exec", "kla", "ping", "-c", "40", "-i", "0.2", "-W", "1", ipB)
		done <- out
	}()
	time.Sleep(2 * time.Second)
	pids, _ := run("ip", "netns", "pids", b.netns)
	killed := 0
	for _, p := range strings.Fields(pids) {
		if cmd, _ := os.ReadFile("/proc/" + p + "/cmdline"); strings.HasPrefix(string(cmd), "/vxbridge\x00serve") {
			pid, _ := strconv.Atoi(p)
			syscall.Kill(pid, syscall.SIGKILL)
			killed++
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d plugin processes on B, want 1", killed)
	}
	out := <-done
	if !strings.Contains(out, " 0% packet loss") {
		t.Errorf("pings from A to B across the plugin's kill -9 on B:\n%s", out)
	}
	if !a.fdbHas(macB) {
		t.Error("B's endpoint left A's table across B's plugin restart")
	}
}

// The Consul leader killed: the other servers elect a new one, and an
// overlay `docker run` on a host whose agent lives works again within
// seconds, nothing lost.
func TestUpOverlayLeaderKilled(t *testing.T) {
	needLab(t)
	const nw = "ovlead"
	overlay(t, hosts[0], nw, "--subnet", "10.217.0.0/24")
	var leader string
	hosts[0].getJSON(t, "http://127.0.0.1:8500/v1/status/leader", &leader)
	var dead host
	for _, h := range hosts {
		if strings.HasPrefix(leader, h.underlay.String()+":") {
			dead = h
		}
	}
	if dead.name == "" {
		t.Fatalf("leader %q is none of the lab hosts", leader)
	}
	var alive []host
	for _, h := range hosts {
		if h.name != dead.name {
			alive = append(alive, h)
		}
	}
	// A container on each surviving host before the loss.
	for _, h := range alive {
		h.container(t, "lead"+strings.ToLower(h.name), nw)
	}
	t.Cleanup(func() { repairLab(t) })
	b, err := os.ReadFile(filepath.Join(dead.dir, "consul.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	syscall.Kill(pid, syscall.SIGKILL)
	h := alive[0]
	took := waitUntil(t, 60*time.Second, "an overlay docker run on host "+h.name+" after the leader's loss", func() bool {
		_, err := run("docker", "-H", h.dockerHost, "run", "-d", "--name", "leadafter", "--network", nw, image, "sleep", "600")
		if err != nil {
			run("docker", "-H", h.dockerHost, "rm", "-f", "leadafter")
		}
		return err == nil
	})
	t.Cleanup(func() { run("docker", "-H", h.dockerHost, "rm", "-f", "leadafter") })
	t.Logf("leader %s (host %s) killed: an overlay docker run on host %s worked again after %v", leader, dead.name, h.name, took)
	// The other host's watch may still be waiting out the election (its
	// blocking query failed with the leader): reachable within seconds,
	// not necessarily at once.
	other, ip := alive[1], h.ipOf(t, "leadafter", nw)
	reach := waitUntil(t, 15*time.Second, "the container started after the leader's loss, from the other surviving host", func() bool {
		return other.canPing("lead"+strings.ToLower(other.name), ip)
	})
	t.Logf("reachable from host %s %v after its docker run returned", other.name, reach)
}

// A container removed on B while B's plugin was down: once the plugin is
// back, reconciliation frees its cluster address and its endpoint leaves
// the other hosts' tables.
func TestUpOverlayReconcileAfterPluginDown(t *testing.T) {
	needLab(t)
	a, b := hosts[0], hosts[1]
	const nw = "ovrec"
	overlay(t, a, nw, "--subnet", "10.218.0.0/24")
	a.container(t, "reca", nw)
	ipB, macB := b.container(t, "recb", nw), b.macOf(t, "recb", nw)
	if !a.fdbHas(macB) {
		t.Fatal("B's endpoint not on A")
	}
	b.docker(t, "plugin", "disable", "-f", driver)
	t.Cleanup(func() { run("docker", "-H", b.dockerHost, "plugin", "enable", driver) })
	// dockerd retries the teardown for ~15 s, then gives up on the plugin.
	run("docker", "-H", b.dockerHost, "rm", "-f", "recb")
	b.docker(t, "plugin", "enable", driver)
	out := mustReconcile(t, b)
	t.Logf("vxbridge reconcile on B: %s", out)
	var st struct {
		Pools []struct{ Allocated []string }
	}
	if err := json.Unmarshal([]byte(mustState(t, b)), &st); err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pools {
		if slices.Contains(p.Allocated, ipB) {
			t.Errorf("B's pool still holds %s after reconciliation: %v", ipB, p.Allocated)
		}
	}
	waitUntil(t, 10*time.Second, "B's removed endpoint to leave A's table", func() bool { return !a.fdbHas(macB) })
}

// mustReconcile runs `vxbridge reconcile` against host h's plugin.
func mustReconcile(t *testing.T, h host) string {
	t.Helper()
	out, err := run("../../bin/vxbridge", "reconcile", "--socket", pluginSocket(t, h))
	if err != nil {
		t.Fatalf("host %s: vxbridge reconcile: %v %s", h.name, err, out)
	}
	return out
}
