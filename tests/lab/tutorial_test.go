//go:build lab

package lab

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxbridge/vxbridge/tests/tutorial"
)

// TestUpTutorial runs the README tutorial's three-host part as written, in
// order (see tests/tutorial): its blocks reach each lab host's dockerd
// through DOCKER_HOST from `scripts/lab.sh env`, as a reader's would. Its
// clean-up must leave no container and no network on any host.
func TestUpTutorial(t *testing.T) {
	needLab(t)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	p, err := tutorial.Parse(readme, "lab")
	if err != nil {
		t.Fatal(err)
	}
	// The part's own lines set DOCKER_HOST; none may leak in from outside.
	// DOCKER_HOST_A/B/C as its first block sets them, for a clean-up run
	// on its own.
	env := []string{"DOCKER_HOST="}
	for _, h := range hosts {
		env = append(env, "DOCKER_HOST_"+h.name+"="+h.dockerHost)
	}
	p.Clean(t, "../..", env)
	before := labObjects(t)
	p.Check(t, "../..", env)
	// Other hosts remove their instance of a removed overlay in the background.
	var after []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		if after = labObjects(t); slices.Equal(after, before) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tutorial left containers or networks behind:\nbefore %v\nafter  %v", before, after)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// labObjects lists every container and network of every lab host.
func labObjects(t *testing.T) []string {
	t.Helper()
	var ids []string
	for _, h := range hosts {
		for _, id := range strings.Fields(h.docker(t, "ps", "-aq", "--no-trunc") + " " + h.docker(t, "network", "ls", "-q", "--no-trunc")) {
			ids = append(ids, h.name+":"+id)
		}
	}
	slices.Sort(ids)
	return ids
}
