package consul

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests run a real Consul agent (-dev: one in-memory server) on free
// loopback ports.
const howToRun = "no consul binary: run `VXBRIDGE_CONSUL=$(bash scripts/consul.sh) go test ./store/...` " +
	"(or put consul on PATH)"

// consulBinary finds the agent: $VXBRIDGE_CONSUL, else consul on PATH, else
// the one scripts/consul.sh caches.
func consulBinary() string {
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

type agent struct {
	addr string // HTTP API, host:port
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// startAgent starts `consul agent -dev` with extra arguments and waits for
// it to have a leader. The caller stops it.
func startAgent(extra ...string) (*agent, error) {
	bin := consulBinary()
	if bin == "" {
		return nil, errNoConsul
	}
	ports := make([]int, 4)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	a := &agent{addr: "127.0.0.1:" + strconv.Itoa(ports[0]), out: &syncBuffer{}, done: make(chan struct{})}
	args := []string{"agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", "-log-level=warn",
		"-node=vxbridge-test-" + strconv.Itoa(ports[0]),
		"-http-port=" + strconv.Itoa(ports[0]), "-serf-lan-port=" + strconv.Itoa(ports[1]),
		"-serf-wan-port=" + strconv.Itoa(ports[2]), "-server-port=" + strconv.Itoa(ports[3]),
		"-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1"}
	a.cmd = exec.Command(bin, append(args, extra...)...)
	a.cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1")
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	// The agent must not outlive a killed test binary.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { a.cmd.Wait(); close(a.done) }()
	if err := a.waitLeader(30 * time.Second); err != nil {
		a.stop()
		return nil, fmt.Errorf("consul agent: %w\n%s", err, a.out.String())
	}
	return a, nil
}

var errNoConsul = fmt.Errorf("%s", howToRun)

func (a *agent) waitLeader(limit time.Duration) error {
	c := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-a.done:
			return fmt.Errorf("exited: %v", a.cmd.ProcessState)
		default:
		}
		if resp, err := c.Get("http://" + a.addr + "/v1/status/leader"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && len(bytes.Trim(bytes.TrimSpace(body), `"`)) > 0 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no leader after %s", limit)
}

// stop kills the agent (as a crash would) and waits for it.
func (a *agent) stop() {
	a.cmd.Process.Kill()
	<-a.done
}

// freePort returns a loopback port free for both TCP and UDP (serf uses
// both).
func freePort() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", l.Addr().String())
		l.Close()
		if err == nil {
			u.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free loopback port for TCP and UDP")
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

// One agent serves every test that does not stop it; TestMain stops it.
var shared struct {
	once sync.Once
	a    *agent
	err  error
}

func sharedAgent(t *testing.T) *agent {
	t.Helper()
	shared.once.Do(func() { shared.a, shared.err = startAgent() })
	if shared.err == errNoConsul {
		t.Skip(howToRun)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.a
}

// ownAgent starts an agent for one test (one it stops, or one with other
// settings).
func ownAgent(t *testing.T, extra ...string) *agent {
	t.Helper()
	a, err := startAgent(extra...)
	if err == errNoConsul {
		t.Skip(howToRun)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
	return a
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.a != nil {
		shared.a.stop()
	}
	os.Exit(code)
}

// open returns a Store on a for one test, under its own prefix.
func open(t *testing.T, a *agent, prefix string) *Store {
	t.Helper()
	s, err := Open(Options{Address: a.addr, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
