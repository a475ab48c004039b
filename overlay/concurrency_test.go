package overlay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// Many callers at once: every change is applied, each caller's changes in
// its order, and the kernel ends exactly as the table says.
func TestConcurrentChanges(t *testing.T) {
	h, d := oneHost(t)
	ctx := context.Background()
	if err := h.ov.EnsureDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, 3*n)
	for i := range n {
		wg.Go(func() {
			p := testPeer(byte(10+i), fmt.Sprintf("192.0.2.%d", 100+i%4))
			errs <- h.ov.Add(ctx, d.VNI, p)
			if i%2 == 1 { // the odd ones leave again, then the last third come back
				errs <- h.ov.Remove(ctx, d.VNI, p)
				if i%3 == 0 {
					errs <- h.ov.Add(ctx, d.VNI, p)
				}
			}
		})
	}
	wg.Go(func() { // readers in between see a consistent table
		for range n {
			if _, err := h.ov.Status(ctx, d.VNI); err != nil {
				errs <- err
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st, err := h.ov.Status(ctx, d.VNI)
	if err != nil {
		t.Fatal(err)
	}
	var want []Entry
	for i := range n {
		if i%2 == 0 || i%3 == 0 {
			want = append(want, peerEntries(testPeer(byte(10+i), fmt.Sprintf("192.0.2.%d", 100+i%4)))...)
		}
	}
	sameEntryList(t, "programmed", st.Programmed, want...)
	if len(st.Missing)+len(st.Stale) != 0 || len(st.Wanted) != len(want)/3 {
		t.Fatalf("missing %v, stale %v, %d wanted", st.Missing, st.Stale, len(st.Wanted))
	}
}

func TestCanceledAndClosed(t *testing.T) {
	o := New(quietLog(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := testPeer(3, "192.0.2.2")
	if err := o.Add(ctx, 42, p); !errors.Is(err, context.Canceled) {
		t.Fatalf("Add with a canceled context = %v", err)
	}
	if st, err := o.Status(context.Background(), 42); err != nil || len(st.Wanted) != 0 {
		t.Fatalf("a canceled Add was applied: %+v, %v", st, err)
	}
	o.Close()
	o.Close()
	if err := o.Sync(context.Background(), 42, []Peer{p}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sync after Close = %v", err)
	}
}
