//go:build e2e

package tests

import (
	"strings"
	"testing"
)

// "The world": a network namespace standing for another machine, or the
// internet, joined to the host by a veth pair with test addresses. It has
// no route to any container subnet, so a container reaching it proves
// masquerade, and it reaches published ports the way a remote client does.
// No traffic ever leaves this machine.
const (
	worldNS     = "vxt-world"
	worldHostIf = "vxt-wh"
	worldIP     = "203.0.113.1"   // inside the namespace
	hostIP      = "203.0.113.254" // the host's side: one of "its own addresses"
)

func world(t *testing.T) {
	t.Helper()
	steps := [][]string{
		{"ip", "netns", "add", worldNS},
		{"ip", "link", "add", worldHostIf, "type", "veth", "peer", "name", "vxt-wn", "netns", worldNS},
		{"ip", "addr", "add", hostIP + "/24", "dev", worldHostIf},
		{"ip", "link", "set", worldHostIf, "up"},
		{"ip", "-n", worldNS, "addr", "add", worldIP + "/24", "dev", "vxt-wn"},
		{"ip", "-n", worldNS, "link", "set", "vxt-wn", "up"},
		{"ip", "-n", worldNS, "link", "set", "lo", "up"},
	}
	t.Cleanup(func() {
		run("ip", "netns", "del", worldNS)
		run("ip", "link", "del", worldHostIf)
	})
	for _, s := range steps {
		if out, err := run(s...); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(s, " "), err, out)
		}
	}
}

// fromWorld runs a command inside the world namespace.
func fromWorld(args ...string) (string, error) {
	return run(append([]string{"ip", "netns", "exec", worldNS}, args...)...)
}

// httpGet fetches path from addr:port with busybox nc (busybox wget is not
// reliable here) and returns the body; "" when unreachable. nc's -w bounds
// only the connect, so timeout bounds the whole exchange.
func httpGet(where func(...string) (string, error), addr, port, path string) string {
	out, err := where("sh", "-c", "printf 'GET "+path+" HTTP/1.0\\r\\n\\r\\n' | busybox timeout 5 busybox nc -w 3 "+addr+" "+port)
	if err != nil {
		return ""
	}
	if _, body, ok := strings.Cut(out, "\r\n\r\n"); ok {
		return strings.TrimSpace(body)
	}
	return ""
}

func onHost(args ...string) (string, error) { return run(args...) }

func inContainer(c string) func(...string) (string, error) {
	return func(args ...string) (string, error) {
		return run(append([]string{"docker", "exec", c}, args...)...)
	}
}
