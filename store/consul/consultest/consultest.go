// Package consultest runs a real Consul agent (`consul agent -dev`: one
// in-memory server on free loopback ports) for tests of any package that
// needs the cluster store. A test without a consul binary skips, saying how
// to get one.
package consultest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// HowToRun is the skip message when no consul binary is found.
const HowToRun = "no consul binary: run `VXBRIDGE_CONSUL=$(bash scripts/consul.sh) go test ./...` " +
	"(or put consul on PATH)"

var errNoConsul = errors.New(HowToRun)

// Binary finds the agent: $VXBRIDGE_CONSUL, else consul on PATH, else the
// one scripts/consul.sh caches. "" when there is none.
func Binary() string {
	if p := os.Getenv("VXBRIDGE_CONSUL"); p != "" {
		return p
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p
	}
	cache := os.Getenv("VXBRIDGE_CACHE")
	if cache == "" {
		cache = "/var/cache/vxbridge"
	}
	if p := filepath.Join(cache, "consul-v1.14.11"); isExecutable(p) {
		return p
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Agent is a running `consul agent -dev`.
type Agent struct {
	// Addr is its HTTP API, host:port.
	Addr string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// Start starts an agent for one test, waits for it to be ready and stops
// it when the test ends. Tests that stop it themselves (Stop) use it;
// others use Shared.
func Start(t testing.TB) *Agent { return startFor(t, "") }

// StartACL is Start with ACLs on, denying by default, and root as the
// initial management token.
func StartACL(t testing.TB, root string) *Agent { return startFor(t, root) }

func startFor(t testing.TB, root string) *Agent {
	t.Helper()
	a, err := start(root)
	if errors.Is(err, errNoConsul) {
		t.Skip(HowToRun)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

// One agent serves every test of a test binary that does not stop it;
// Main stops it.
var shared struct {
	once sync.Once
	a    *Agent
	err  error
}

// Shared returns the agent shared by the tests of this test binary,
// starting it on first use. Tests keep apart by giving their stores
// different key prefixes. The package's TestMain must call Main.
func Shared(t testing.TB) *Agent {
	t.Helper()
	shared.once.Do(func() { shared.a, shared.err = start("") })
	if errors.Is(shared.err, errNoConsul) {
		t.Skip(HowToRun)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.a
}

var (
	runs    atomic.Int64
	runOfTB sync.Map // testing.TB → its run number
)

// Prefix is a key prefix of base for this run of test t alone, the same on
// every call within it: the shared agent outlives a run, so
// `go test -count=N` must not find the keys of the run before.
func Prefix(t testing.TB, base string) string {
	n, _ := runOfTB.LoadOrStore(t, runs.Add(1))
	return fmt.Sprintf("%s/%s-%d/", strings.TrimSuffix(base, "/"), strings.ReplaceAll(t.Name(), "/", "-"), n)
}

// Main runs the tests, then stops the shared agent: call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if shared.a != nil {
		shared.a.Stop()
	}
	os.Exit(code)
}

func start(root string) (*Agent, error) {
	bin := Binary()
	if bin == "" {
		return nil, errNoConsul
	}
	// Another test binary's agent may take a port between our pick and
	// the agent's bind: a few tries with fresh ports.
	var err error
	for range 3 {
		var a *Agent
		if a, err = startOn(bin, root); err == nil {
			return a, nil
		}
	}
	return nil, err
}

func startOn(bin, root string) (*Agent, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	a := &Agent{Addr: "127.0.0.1:" + strconv.Itoa(ports[0]), out: &syncBuffer{}, done: make(chan struct{})}
	node := "vxbridge-test-" + strconv.Itoa(ports[0])
	args := []string{"agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", "-log-level=warn", "-node=" + node,
		"-http-port=" + strconv.Itoa(ports[0]), "-serf-lan-port=" + strconv.Itoa(ports[1]),
		"-serf-wan-port=" + strconv.Itoa(ports[2]), "-server-port=" + strconv.Itoa(ports[3]),
		"-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1"}
	if root != "" {
		args = append(args, `-hcl=acl { enabled = true, default_policy = "deny", tokens { initial_management = "`+root+`" } }`)
	}
	a.cmd = exec.Command(bin, args...)
	a.cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1")
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	// The agent must not outlive a killed test binary.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { a.cmd.Wait(); close(a.done) }()
	if err := a.waitReady(node, root, 30*time.Second); err != nil {
		a.Stop()
		return nil, fmt.Errorf("consul agent: %w\n%s", err, a.out.String())
	}
	return a, nil
}

// waitReady waits for a leader and for the agent's own node in the
// catalog: before that, creating a session fails ("Missing node
// registration").
func (a *Agent) waitReady(node, token string, limit time.Duration) error {
	c := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-a.done:
			return fmt.Errorf("exited: %v", a.cmd.ProcessState)
		default:
		}
		if a.answers(&c, "/v1/status/leader", "") && a.answers(&c, "/v1/catalog/node/"+node, token) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no leader or no node %s after %s", node, limit)
}

// answers reports whether GET path (with token, if any) gives 200 with a
// body other than empty, "" or null.
func (a *Agent) answers(c *http.Client, path, token string) bool {
	req, err := http.NewRequest("GET", "http://"+a.Addr+path, nil)
	if err != nil {
		return false
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	body = bytes.Trim(bytes.TrimSpace(body), `"`)
	return resp.StatusCode == 200 && len(body) > 0 && string(body) != "null"
}

// Stop kills the agent (as a crash would) and waits for it. Calling it
// again does nothing.
func (a *Agent) Stop() {
	a.cmd.Process.Kill()
	<-a.done
}

// freePorts returns n distinct loopback ports free for both TCP and UDP
// (serf uses both): each is held until all are chosen, so none repeats.
func freePorts(n int) ([]int, error) {
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries == 20*n {
			return nil, fmt.Errorf("no free loopback port for TCP and UDP")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		u, err := net.ListenPacket("udp", l.Addr().String())
		if err != nil {
			continue
		}
		held = append(held, u)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
