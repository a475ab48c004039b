//go:build e2e

package tests

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vxbridge/vxbridge/tests/tutorial"
)

// TestTutorial runs the README tutorial's one-host part as written, in
// order, against this host's dockerd (see tests/tutorial), and checks that
// its clean-up leaves no container and no network behind.
func TestTutorial(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	p, err := tutorial.Parse(readme, "one-host")
	if err != nil {
		t.Fatal(err)
	}
	p.Clean(t, "..", nil)
	before := dockerObjects(t)
	p.Check(t, "..", nil)
	if after := dockerObjects(t); !slices.Equal(after, before) {
		t.Errorf("the tutorial left containers or networks behind:\nbefore %v\nafter  %v", before, after)
	}
}

// dockerObjects lists the IDs of every container and network of dockerd.
func dockerObjects(t *testing.T) []string {
	t.Helper()
	ids := strings.Fields(docker(t, "ps", "-aq", "--no-trunc"))
	ids = append(ids, strings.Fields(docker(t, "network", "ls", "-q", "--no-trunc"))...)
	slices.Sort(ids)
	return ids
}
