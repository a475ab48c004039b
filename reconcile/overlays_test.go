package reconcile_test

import (
	"context"
	"strings"
	"testing"

	"github.com/vxbridge/vxbridge/driver"
)

// The instance of an overlay the cluster no longer defines is removed; one
// dockerd refuses to remove is reported, with what to do: remove its
// containers, or, when dockerd holds none yet counts endpoints (Docker
// 20.10's count gone wrong), restart dockerd.
func TestOverlaysRemoveInstancesOfRemovedOverlays(t *testing.T) {
	ov := &dnet{ID: "n1" + strings.Repeat("0", 62), Name: "demo", Options: map[string]string{driver.OptOverlay: "demo"}, EndpointCnt: -1,
		Containers: map[string]dcontainer{"c1": {Name: "web", EndpointID: "e1", IPv4: "10.1.0.2/24"}}}
	f := startDockerd(t, ov)
	w := newWorld(t, f)
	ovs := w.rec.NewOverlays("h1")
	ctx := context.Background()

	ovs.Sync(ctx, nil)
	if why := ovs.Conflicts()["demo"]; !strings.Contains(why, "has active endpoints") || !strings.Contains(why, "remove or disconnect its 1 container") {
		t.Fatalf("with a container on it: %q; want dockerd's refusal and the container to remove", why)
	}
	f.removeContainer(ov.ID, "c1")
	f.mu.Lock()
	ov.EndpointCnt = 1
	f.mu.Unlock()
	ovs.Sync(ctx, nil)
	if why := ovs.Conflicts()["demo"]; !strings.Contains(why, "endpoints is stuck") || !strings.Contains(why, "restart dockerd") {
		t.Fatalf("with no container but a count of 1: %q; want the stuck count named and a dockerd restart", why)
	}
	f.mu.Lock()
	ov.EndpointCnt = 0 // what dockerd's restart does
	f.mu.Unlock()
	ovs.Sync(ctx, nil)
	f.mu.Lock()
	left := len(f.nets)
	f.mu.Unlock()
	if len(ovs.Conflicts()) != 0 || left != 0 {
		t.Fatalf("after the recount: conflicts %v, %d network(s) left", ovs.Conflicts(), left)
	}
}
