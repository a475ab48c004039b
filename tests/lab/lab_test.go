//go:build lab

// Package lab checks the three-host lab of scripts/lab.sh for what a user of
// it relies on. `make lab-test` runs it: `lab.sh up`, the TestUp* tests,
// `lab.sh down`, then the TestDown* tests (nothing of the lab is left).
// Both need root; TestUp* fail when the lab is not up.
package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	driver = "vxbridge:latest"
	image  = "vxbridge-test/busybox:latest"
)

// host is one lab host as `lab.sh env` describes it.
type host struct {
	name       string // A, B or C
	dockerHost string // unix://…/docker.sock
	netns      string // name under /run/netns
	underlay   netip.Addr
	dir        string // the host's folder under the lab root
	metrics    string // the plugin's Prometheus endpoint, inside netns
}

var (
	labRoot string
	hosts   []host
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "lab tests must run as root (run `make lab-test`)")
		os.Exit(1)
	}
	if err := readEnv(); err != nil {
		fmt.Fprintln(os.Stderr, "lab tests:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// readEnv takes the lab's layout from `lab.sh env`, its one source.
func readEnv() error {
	out, err := exec.Command("bash", "../../scripts/lab.sh", "env").Output()
	if err != nil {
		return fmt.Errorf("scripts/lab.sh env: %w", err)
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		for _, kv := range strings.Fields(strings.TrimPrefix(sc.Text(), "export ")) {
			k, v, _ := strings.Cut(kv, "=")
			vars[k] = v
		}
	}
	labRoot = vars["VXLAB_ROOT"]
	if labRoot == "" {
		return fmt.Errorf("scripts/lab.sh env gives no VXLAB_ROOT: %q", out)
	}
	for _, n := range []string{"A", "B", "C"} {
		ip, err := netip.ParseAddr(vars["UNDERLAY_IP_"+n])
		if err != nil {
			return fmt.Errorf("UNDERLAY_IP_%s: %w", n, err)
		}
		hosts = append(hosts, host{
			name:       n,
			dockerHost: vars["DOCKER_HOST_"+n],
			netns:      vars["NETNS_"+n],
			underlay:   ip,
			dir:        filepath.Join(labRoot, strings.ToLower(n)),
			metrics:    vars["METRICS_URL_"+n],
		})
	}
	return nil
}

func run(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// docker runs a docker command against host h that must succeed.
func (h host) docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(append([]string{"docker", "-H", h.dockerHost}, args...)...)
	if err != nil {
		t.Fatalf("host %s: docker %s: %v\n%s", h.name, strings.Join(args, " "), err, out)
	}
	return out
}

var upOnce sync.Once
var upErr error

// needLab fails the test unless every lab dockerd answers.
func needLab(t *testing.T) {
	t.Helper()
	upOnce.Do(func() {
		for _, h := range hosts {
			if out, err := run("docker", "-H", h.dockerHost, "version", "-f", "{{.Server.Version}}"); err != nil {
				upErr = fmt.Errorf("dockerd of host %s (%s) does not answer: %v %s (run `make lab`)", h.name, h.dockerHost, err, out)
				return
			}
		}
	})
	if upErr != nil {
		t.Fatal(upErr)
	}
}

// inNetns runs fn on a thread in the network namespace at path. Sockets stay
// in the namespace they were made in, so fn may dial there. The thread is
// never unlocked: left in the namespace, it ends with its goroutine.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// client is an HTTP client whose connections start in host h's network
// namespace: the lab's addresses are reachable only from inside.
func (h host) client() *http.Client {
	dial := func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
		err = inNetns("/run/netns/"+h.netns, func() error {
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true},
	}
}

// getJSON decodes the answer to GET url, made from host h.
func (h host) getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := h.client().Get(url)
	if err != nil {
		t.Fatalf("from host %s: GET %s: %v", h.name, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("from host %s: GET %s: %s %v %s", h.name, url, resp.Status, err, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("from host %s: GET %s: %v in %s", h.name, url, err, body)
	}
}

// TestUpPlugins: every host's plugin is enabled, on that host's own state
// folder and docker socket (set before its first enable), and has opened its
// state there.
func TestUpPlugins(t *testing.T) {
	needLab(t)
	for _, h := range hosts {
		if got := h.docker(t, "plugin", "inspect", "-f", "{{.Enabled}}", driver); got != "true" {
			t.Errorf("host %s: plugin %s enabled = %s", h.name, driver, got)
		}
		var mounts []struct{ Name, Source string }
		if err := json.Unmarshal([]byte(h.docker(t, "plugin", "inspect", "-f", "{{json .Settings.Mounts}}", driver)), &mounts); err != nil {
			t.Fatalf("host %s: plugin mounts: %v", h.name, err)
		}
		want := map[string]string{"state": filepath.Join(h.dir, "state"), "docker": strings.TrimPrefix(h.dockerHost, "unix://")}
		for _, m := range mounts {
			if w, ok := want[m.Name]; ok && m.Source != w {
				t.Errorf("host %s: plugin mount %s from %s, want %s", h.name, m.Name, m.Source, w)
			}
			delete(want, m.Name)
		}
		if len(want) > 0 {
			t.Errorf("host %s: plugin has no mounts %v", h.name, want)
		}
		if _, err := os.Stat(filepath.Join(h.dir, "state", "state.db")); err != nil {
			t.Errorf("host %s: the plugin's state DB is not in the host's state folder: %v", h.name, err)
		}
	}
}

// TestUpConsul: the agent on every host, asked on the host's own 127.0.0.1,
// names the same leader and sees all three servers alive.
func TestUpConsul(t *testing.T) {
	needLab(t)
	leaders := map[string][]string{}
	for _, h := range hosts {
		var leader string
		h.getJSON(t, "http://127.0.0.1:8500/v1/status/leader", &leader)
		if leader == "" {
			t.Errorf("host %s: Consul has no leader", h.name)
		}
		leaders[leader] = append(leaders[leader], h.name)
		var members []struct {
			Name   string
			Addr   string
			Status int
		}
		h.getJSON(t, "http://127.0.0.1:8500/v1/agent/members", &members)
		alive := 0
		for _, m := range members {
			if m.Status == 1 { // serf's StatusAlive
				alive++
			}
		}
		if alive != 3 {
			t.Errorf("host %s: %d Consul members alive, want 3: %+v", h.name, alive, members)
		}
	}
	if len(leaders) != 1 {
		t.Errorf("hosts disagree on the Consul leader: %v", leaders)
	}
}

// TestUpUnderlay: every host reaches every other one over the underlay, by
// ping and by TCP (the other's Consul API on its underlay address).
func TestUpUnderlay(t *testing.T) {
	needLab(t)
	for _, from := range hosts {
		for _, to := range hosts {
			if from.name == to.name {
				continue
			}
			if out, err := run("nsenter", "--net=/run/netns/"+from.netns, "busybox", "ping", "-c", "1", "-W", "2", to.underlay.String()); err != nil {
				t.Errorf("host %s cannot ping host %s at %s: %v\n%s", from.name, to.name, to.underlay, err, out)
			}
			var leader string
			from.getJSON(t, fmt.Sprintf("http://%s/v1/status/leader", netip.AddrPortFrom(to.underlay, 8500)), &leader)
		}
	}
}

// TestUpNetworks: on every host a vxbridge network can be made, and a
// container on it reaches its gateway and a neighbour.
func TestUpNetworks(t *testing.T) {
	needLab(t)
	for _, h := range hosts {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			nw := fmt.Sprintf("vxlabt-%s-%d", strings.ToLower(h.name), time.Now().UnixNano()%1_000_000)
			id := h.docker(t, "network", "create", "-d", driver, nw)
			// The plugin runs in the host's namespace: its bridge is there,
			// not on the machine.
			br := "vxb-" + id[:11]
			if out, err := run("ip", "-n", h.netns, "link", "show", br); err != nil {
				t.Errorf("host %s: bridge %s not in namespace %s: %v %s", h.name, br, h.netns, err, out)
			}
			if _, err := net.InterfaceByName(br); err == nil {
				t.Errorf("host %s: bridge %s is on the machine, not in namespace %s", h.name, br, h.netns)
			}
			t.Cleanup(func() {
				if out, err := run("docker", "-H", h.dockerHost, "network", "rm", nw); err != nil {
					t.Errorf("host %s: network rm %s: %v %s", h.name, nw, err, out)
				}
			})
			var names []string
			for _, c := range []string{nw + "-1", nw + "-2"} {
				h.docker(t, "run", "-d", "--name", c, "--network", nw, image, "sleep", "600")
				t.Cleanup(func() { run("docker", "-H", h.dockerHost, "rm", "-f", c) })
				names = append(names, c)
			}
			// The gateway as the container sees it: its default route.
			route := h.docker(t, "exec", names[0], "ip", "route", "show", "default")
			f := strings.Fields(route)
			if len(f) < 3 || f[1] != "via" {
				t.Fatalf("host %s: no default route in %s: %q", h.name, names[0], route)
			}
			gw := f[2]
			peer := h.docker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, nw), names[1])
			for what, addr := range map[string]string{"gateway": gw, "neighbour": peer} {
				if out, err := run("docker", "-H", h.dockerHost, "exec", names[0], "ping", "-c", "1", "-W", "2", addr); err != nil {
					t.Errorf("host %s: %s cannot ping its %s %s: %v\n%s", h.name, names[0], what, addr, err, out)
				}
			}
		})
	}
}

// TestDownLeftNothing, after `lab.sh down`: no lab namespace, process, mount,
// link, cgroup or host folder is left, and the main dockerd's plugin is as
// it was before the lab came up (VXLAB_MAIN_PLUGIN, recorded by
// scripts/lab-test.sh).
func TestDownLeftNothing(t *testing.T) {
	names, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.HasPrefix(n.Name(), "vxlab-") {
			t.Errorf("network namespace %s left", n.Name())
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // ended meanwhile
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		for _, h := range hosts {
			if strings.Contains(cmd, h.dir+"/") {
				t.Errorf("process %s left: %s", filepath.Base(filepath.Dir(p)), cmd)
			}
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, labRoot+"/") {
			t.Errorf("mount left: %s", line)
		}
	}
	for _, h := range hosts {
		if _, err := os.Stat(h.dir); !os.IsNotExist(err) {
			t.Errorf("host folder %s left (%v)", h.dir, err)
		}
		if _, err := net.InterfaceByName("port-" + strings.ToLower(h.name)); err == nil {
			t.Errorf("link port-%s left on the host", strings.ToLower(h.name))
		}
		cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/" + h.netns)
		more, _ := filepath.Glob("/sys/fs/cgroup/" + h.netns)
		for _, c := range append(cgroups, more...) {
			t.Errorf("cgroup %s left", c)
		}
	}
	before, ok := os.LookupEnv("VXLAB_MAIN_PLUGIN")
	if !ok {
		t.Log("VXLAB_MAIN_PLUGIN unset: the main dockerd's plugin is not compared")
		return
	}
	if now := mainPlugin(); now != before {
		t.Errorf("main dockerd's plugin changed: %q before the lab, %q now", before, now)
	}
}

// mainPlugin describes the main dockerd's plugin the way
// scripts/lab-test.sh records it.
func mainPlugin() string {
	out, err := exec.Command("bash", "../../scripts/lab-test.sh", "main-plugin").Output()
	if err != nil {
		return fmt.Sprintf("error: %v", err)
	}
	return strings.TrimSpace(string(out))
}
