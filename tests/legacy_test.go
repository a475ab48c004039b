//go:build e2e

package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The plugin's socket is for dockerd (root) only.
func TestSocketIsRootOnly(t *testing.T) {
	socks, _ := filepath.Glob("/run/docker/plugins/*/vxbridge.sock")
	if len(socks) != 1 {
		t.Fatalf("want one managed plugin socket, found %v", socks)
	}
	fi, err := os.Stat(socks[0])
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		t.Fatalf("socket %s has mode %v: group or others may use it", socks[0], perm)
	}
}

// `vxbridge serve` as a plain daemon: dockerd finds the legacy socket by
// its name. It shares the managed plugin's state file, so the managed
// plugin steps aside meanwhile (the state file admits one plugin at a
// time); and since dockerd resolves "vxbridge" to the installed managed
// plugin, the socket gets another name.
func TestLegacyDaemon(t *testing.T) {
	mustRun(t, "docker", "plugin", "disable", "-f", driverName)
	enabled := false
	t.Cleanup(func() {
		if !enabled {
			run("docker", "plugin", "enable", driverName)
		}
	})

	const sock = "/run/docker/plugins/vxlegacy.sock"
	daemon := exec.Command(vxbridgeBin, "serve", "--socket", sock)
	log, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	daemon.Stdout, daemon.Stderr = log, log
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			daemon.Process.Signal(syscall.SIGTERM)
			daemon.Wait()
			stopped = true
		}
	}
	t.Cleanup(stop)
	waitFor(t, "the legacy socket", func() bool { _, err := os.Stat(sock); return err == nil })

	n, _ := network(t, "-d", "vxlegacy", "--ipam-driver", "vxlegacy", name(t, "legacy"))
	a := container(t, "--name", name(t, "a"), "--network", n)
	b := container(t, "--name", name(t, "b"), "--network", n)
	mustPing(t, a, b)
	if got := docker(t, "network", "inspect", "-f", "{{.Driver}}", n); got != "vxlegacy" {
		t.Fatalf("driver %q, want vxlegacy", got)
	}
	// A second instance on the same state refuses to start, clearly.
	out, err := run(vxbridgeBin, "serve", "--socket", filepath.Join(t.TempDir(), "second.sock"))
	if err == nil || !strings.Contains(out, "state") {
		t.Fatalf("a second plugin on the same state file: %v %s", err, out)
	}
	docker(t, "rm", "-f", a, b)
	docker(t, "network", "rm", n)
	stop()
	if _, err := os.Stat(sock); err == nil {
		t.Fatalf("the legacy socket outlived the daemon")
	}
	// The managed plugin takes the state file back; the network's clean-up
	// check reads it through it.
	mustRun(t, "docker", "plugin", "enable", driverName)
	enabled = true
	waitFor(t, "the plugin to answer", func() bool { _, err := run(vxbridgeBin, "state"); return err == nil })
}
