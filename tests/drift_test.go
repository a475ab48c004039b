//go:build e2e

package tests

import (
	"os"
	"strings"
	"sync"
	"testing"
)

// TestParallelRunRmLeavesNetworkRemovable: after rounds of parallel
// `docker run --rm` on a vxbridge network, `docker network rm` succeeds
// at once. The network is removed here, not by the `network` helper,
// whose clean-up would restart dockerd to recount and so hide the drift.
//
// dockerd 20.10 counts a network's endpoints with a racy read-modify-write
// (README, "dockerd's endpoint count"). Docker's own bridge fails this way
// too (4 of 25 rounds of 100), and no plugin change was found that stops
// it, so the test fails at dockerd's rate. It runs only when asked
// (VXBRIDGE_E2E_DRIFT=1): to measure that rate, or to check a change that
// claims to avoid the race.
func TestParallelRunRmLeavesNetworkRemovable(t *testing.T) {
	if os.Getenv("VXBRIDGE_E2E_DRIFT") != "1" {
		t.Skip("dockerd's endpoint-count race fails it at dockerd's rate; set VXBRIDGE_E2E_DRIFT=1 to run it")
	}
	const rounds, parallel = 5, 50
	for r := 1; r <= rounds; r++ {
		n := name(t, "drift")
		docker(t, "network", "create", "-d", driverName, n)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var failed []string
		for i := 0; i < parallel; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if out, err := run("docker", "run", "--rm", "--network", n, image, "true"); err != nil {
					mu.Lock()
					failed = append(failed, strings.TrimSpace(out))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		out, err := run("docker", "network", "rm", n)
		if err != nil {
			if strings.Contains(out, "has active endpoints") && attached(t, n) == 0 {
				// Leave nothing behind for later tests: only a
				// restart makes dockerd recount.
				restartDockerd(t)
				run("docker", "network", "rm", n)
				t.Fatalf("round %d: dockerd counts endpoints on %s that no container has (%d parallel docker run --rm): %s", r, n, parallel, out)
			}
			t.Fatalf("round %d: network rm %s: %v %s", r, n, err, out)
		}
		if len(failed) > 0 {
			t.Fatalf("round %d: %d of %d docker run --rm failed, first: %s", r, len(failed), parallel, failed[0])
		}
		t.Logf("round %d: %d containers ran and left, network removed", r, parallel)
	}
}
