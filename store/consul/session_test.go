package consul

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vxbridge/vxbridge/store"
	"github.com/vxbridge/vxbridge/store/consul/consultest"
)

func newSession(t *testing.T, s *Store, name string) store.Session {
	t.Helper()
	sess, err := s.NewSession(context.Background(), name, MinSessionTTL)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

func wantValue(t *testing.T, s store.Store, key, want string) {
	t.Helper()
	if v, err := s.Get(key); err != nil || string(v) != want {
		t.Fatalf("Get(%q) = %q, %v; want %q", key, v, err, want)
	}
}

func wantGone(t *testing.T, s store.Store, key string) {
	t.Helper()
	if v, err := s.Get(key); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, v, err)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitGone waits with Watch until key is gone and returns how long it took.
func waitGone(t *testing.T, s *Store, key string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var index uint64
	for {
		set, next, err := s.Watch(ctx, key, index, limit)
		if err != nil {
			t.Fatalf("%s still there after %s: %v", key, time.Since(start), err)
		}
		if _, ok := set[key]; !ok {
			return time.Since(start)
		}
		index = next
	}
}

func TestSessionDestroy(t *testing.T) {
	s := open(t, consultest.Shared(t), "sess-destroy")
	other := open(t, consultest.Shared(t), "sess-destroy")
	ctx := context.Background()
	sess := newSession(t, s, "host-a")
	if err := sess.Put(ctx, "hosts/a", []byte("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	wantValue(t, other, "hosts/a", "10.0.0.1")
	// The holder may put again (a new value, same holder).
	if err := sess.Put(ctx, "hosts/a", []byte("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	wantValue(t, other, "hosts/a", "10.0.0.2")

	if err := sess.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	wantGone(t, other, "hosts/a")
	if !isClosed(sess.Done()) || sess.Err() != nil {
		t.Fatalf("after Destroy: Done closed %v, Err %v; want closed, nil", isClosed(sess.Done()), sess.Err())
	}
	if err := sess.Put(ctx, "hosts/a", []byte("x")); !errors.Is(err, store.ErrSessionGone) {
		t.Fatalf("Put through a destroyed session: %v, want ErrSessionGone", err)
	}
	wantGone(t, other, "hosts/a")
	if _, err := s.ResumeSession(ctx, sess.ID()); !errors.Is(err, store.ErrSessionGone) {
		t.Fatalf("ResumeSession of a destroyed session: %v, want ErrSessionGone", err)
	}
}

func TestSessionHeldByAnother(t *testing.T) {
	s := open(t, consultest.Shared(t), "sess-held")
	ctx := context.Background()
	one, two := newSession(t, s, "one"), newSession(t, s, "two")
	defer one.Destroy(ctx)
	defer two.Destroy(ctx)
	if err := one.Put(ctx, "k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	err := two.Put(ctx, "k", []byte("2"))
	if err == nil || !strings.Contains(err.Error(), "held by another session") || errors.Is(err, store.ErrSessionGone) {
		t.Fatalf("Put of a key another session holds: %v", err)
	}
	wantValue(t, s, "k", "1")
}

func TestSessionTTLOutOfRange(t *testing.T) {
	s := open(t, consultest.Shared(t), "sess-ttl")
	for _, ttl := range []time.Duration{time.Second, 25 * time.Hour} {
		if _, err := s.NewSession(context.Background(), "h", ttl); err == nil || !strings.Contains(err.Error(), "TTL") {
			t.Fatalf("NewSession with TTL %s: %v, want an error naming the TTL", ttl, err)
		}
	}
}

// A holder that stops renewing (as a killed process does) loses its keys
// once the TTL runs out; its session cannot be resumed then.
func TestSessionExpires(t *testing.T) {
	t.Parallel()
	s := open(t, consultest.Shared(t), "sess-expire")
	ctx := context.Background()
	sess := newSession(t, s, "host-b")
	if err := sess.Put(ctx, "hosts/b", []byte("b")); err != nil {
		t.Fatal(err)
	}
	sess.Close()
	if !isClosed(sess.Done()) || sess.Err() != nil {
		t.Fatalf("after Close: Done closed %v, Err %v", isClosed(sess.Done()), sess.Err())
	}
	// Consul allows itself up to twice the TTL.
	d := waitGone(t, s, "hosts/b", 2*MinSessionTTL+10*time.Second)
	t.Logf("key gone %s after the last renewal (TTL %s)", d.Round(100*time.Millisecond), MinSessionTTL)
	if d < MinSessionTTL-time.Second {
		t.Fatalf("key gone after %s, before the TTL of %s", d, MinSessionTTL)
	}
	if _, err := s.ResumeSession(ctx, sess.ID()); !errors.Is(err, store.ErrSessionGone) {
		t.Fatalf("ResumeSession of an expired session: %v, want ErrSessionGone", err)
	}
}

// A session renewed in the background outlives its TTL many times over, and
// a restarted process resumes it without its keys ever going away.
func TestSessionRenewedAndResumed(t *testing.T) {
	t.Parallel()
	a := consultest.Shared(t)
	ctx := context.Background()
	first := open(t, a, "sess-renew")
	sess := newSession(t, first, "host-c")
	if err := sess.Put(ctx, "hosts/c", []byte("c")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(MinSessionTTL + 2*time.Second)
	wantValue(t, first, "hosts/c", "c")

	// "Restart": the old process stops renewing, a new one resumes.
	first.Close()
	if !isClosed(sess.Done()) {
		t.Fatal("Store.Close did not stop the session's renewal")
	}
	second := open(t, a, "sess-renew")
	resumed, err := second.ResumeSession(ctx, sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	if err := resumed.Put(ctx, "hosts/c", []byte("c2")); err != nil {
		t.Fatalf("Put through the resumed session: %v", err)
	}
	time.Sleep(2*MinSessionTTL + 2*time.Second - MinSessionTTL)
	wantValue(t, second, "hosts/c", "c2")
	if isClosed(resumed.Done()) {
		t.Fatalf("resumed session stopped: %v", resumed.Err())
	}
	if err := resumed.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	wantGone(t, second, "hosts/c")
}

// When Consul ends a session behind its holder's back, the holder learns
// it from Done and Err at its next renewal.
func TestSessionEndedElsewhere(t *testing.T) {
	t.Parallel()
	a := consultest.Shared(t)
	ctx := context.Background()
	s := open(t, a, "sess-elsewhere")
	sess := newSession(t, s, "host-d")
	if err := sess.Put(ctx, "hosts/d", []byte("d")); err != nil {
		t.Fatal(err)
	}
	other, err := open(t, a, "sess-elsewhere").ResumeSession(ctx, sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	wantGone(t, s, "hosts/d")
	start := time.Now()
	select {
	case <-sess.Done():
	case <-time.After(MinSessionTTL):
		t.Fatalf("Done not closed %s after the session ended", MinSessionTTL)
	}
	t.Logf("holder learnt the session ended after %s", time.Since(start).Round(100*time.Millisecond))
	if !errors.Is(sess.Err(), store.ErrSessionGone) {
		t.Fatalf("Err() = %v, want ErrSessionGone", sess.Err())
	}
	if err := sess.Put(ctx, "hosts/d", []byte("d")); !errors.Is(err, store.ErrSessionGone) {
		t.Fatalf("Put through the ended session: %v, want ErrSessionGone", err)
	}
}
