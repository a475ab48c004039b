package consul

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vxbridge/vxbridge/store"
	"github.com/vxbridge/vxbridge/store/consul/consultest"
	"github.com/vxbridge/vxbridge/store/storetest"
)

func TestConformance(t *testing.T) {
	a := consultest.Shared(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		return open(t, a, "conformance")
	})
}

// Two prefixes on one Consul do not see each other's keys.
func TestPrefixesAreSeparate(t *testing.T) {
	a := consultest.Shared(t)
	one, two := open(t, a, "cluster-one"), open(t, a, "cluster-two/")
	if err := one.Update("k", func([]byte) ([]byte, error) { return []byte("1"), nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := two.Get("k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("cluster-two sees cluster-one's key: %v", err)
	}
	if l, err := two.List(""); err != nil || len(l) != 0 {
		t.Fatalf("cluster-two lists %q, %v", l, err)
	}
	if l, err := one.List(""); err != nil || !maps.EqualFunc(l, map[string][]byte{"k": []byte("1")}, bytesEqual) {
		t.Fatalf("cluster-one lists %q, %v; want only k with its prefix stripped", l, err)
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// The address comes from CONSUL_HTTP_ADDR, Consul's own variable.
func TestAddressFromEnvironment(t *testing.T) {
	a := consultest.Shared(t)
	t.Setenv("CONSUL_HTTP_ADDR", "http://"+a.Addr)
	s, err := Open(Options{Prefix: "env"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Address() != a.Addr {
		t.Fatalf("Address() = %q, want %q", s.Address(), a.Addr)
	}
	if err := s.Update("k", func([]byte) ([]byte, error) { return []byte("v"), nil }); err != nil {
		t.Fatal(err)
	}
}

func TestWatch(t *testing.T) {
	s := open(t, consultest.Shared(t), "watch")
	ctx := context.Background()
	put := func(k, v string) {
		t.Helper()
		if err := s.Update(k, func([]byte) ([]byte, error) { return []byte(v), nil }); err != nil {
			t.Fatal(err)
		}
	}
	put("peers/a", "1")

	// Index 0 answers at once with the current set.
	start := time.Now()
	set, index, err := s.Watch(ctx, "peers/", 0, 10*time.Second)
	if err != nil || len(set) != 1 || string(set["peers/a"]) != "1" || index == 0 {
		t.Fatalf("Watch(0) = %q, %d, %v", set, index, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Watch(0) took %s", d)
	}

	// A write elsewhere does not wake it: it returns when wait runs out,
	// with the same index.
	start = time.Now()
	time.AfterFunc(200*time.Millisecond, func() { put("other/x", "1") })
	set2, index2, err := s.Watch(ctx, "peers/", index, 2*time.Second)
	if err != nil || index2 != index || !maps.EqualFunc(set, set2, bytesEqual) {
		t.Fatalf("Watch over an unchanged prefix = %q, %d, %v; want the same set and index %d", set2, index2, err, index)
	}
	if d := time.Since(start); d < 1900*time.Millisecond {
		t.Fatalf("Watch returned after %s, before its wait of 2s, with nothing changed", d)
	}

	// A write under the prefix wakes it at once with the new set.
	for _, change := range []struct {
		do   func()
		want map[string]string
	}{
		{func() { put("peers/b", "2") }, map[string]string{"peers/a": "1", "peers/b": "2"}},
		{func() { put("peers/a", "3") }, map[string]string{"peers/a": "3", "peers/b": "2"}},
		{func() {
			s.Update("peers/a", func([]byte) ([]byte, error) { return nil, nil })
		}, map[string]string{"peers/b": "2"}},
	} {
		time.AfterFunc(300*time.Millisecond, change.do)
		start = time.Now()
		set, index2, err = s.Watch(ctx, "peers/", index, 10*time.Second)
		d := time.Since(start)
		if err != nil || index2 <= index {
			t.Fatalf("Watch = %q, %d, %v; want an index above %d", set, index2, err, index)
		}
		if d > 2*time.Second {
			t.Fatalf("Watch woke %s after the change", d)
		}
		got := map[string]string{}
		for k, v := range set {
			got[k] = string(v)
		}
		if !maps.Equal(got, change.want) {
			t.Fatalf("Watch = %q, want %q", got, change.want)
		}
		index = index2
	}

	// An index from before a reset of Consul's state (higher than any it
	// has now): the wait runs out and the current, lower index comes back,
	// and watching from that one sees the next change.
	set, low, err := s.Watch(ctx, "peers/", index+1_000_000, time.Second)
	if err != nil || low != index || len(set) != 1 {
		t.Fatalf("Watch from a future index = %q, %d, %v; want the current set and index %d", set, low, err, index)
	}
	time.AfterFunc(300*time.Millisecond, func() { put("peers/c", "4") })
	if set, index, err = s.Watch(ctx, "peers/", low, 10*time.Second); err != nil || index <= low || len(set) != 2 {
		t.Fatalf("Watch after a reset = %q, %d, %v", set, index, err)
	}

	// Its caller's context ends it, with the context's error.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(200*time.Millisecond, cancel)
	start = time.Now()
	_, _, err = s.Watch(cctx, "peers/", index, 10*time.Second)
	if !errors.Is(err, context.Canceled) || errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Watch after cancel = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancelled Watch returned after %s", d)
	}
	// Nor is the caller's own deadline mistaken for Consul's silence.
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, _, err = s.Watch(dctx, "peers/", index, 10*time.Second)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Watch past its caller's deadline = %v, want context.DeadlineExceeded", err)
	}
}

// A write that lands between Update's read and its write makes Update read
// again and rerun fn on the new value (the compare-and-swap at work).
func TestUpdateConflictReruns(t *testing.T) {
	s := open(t, consultest.Shared(t), "rerun")
	other := open(t, consultest.Shared(t), "rerun")
	runs := 0
	err := s.Update("k", func(old []byte) ([]byte, error) {
		runs++
		if runs == 1 {
			// Another writer gets in between this read and its write.
			if err := other.Update("k", func([]byte) ([]byte, error) { return []byte("theirs"), nil }); err != nil {
				return nil, err
			}
			return []byte("mine-on-nothing"), nil
		}
		return append([]byte("mine-on-"), old...), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Get("k"); string(v) != "mine-on-theirs" || runs != 2 {
		t.Fatalf("k = %q after %d runs of fn; want mine-on-theirs after 2", v, runs)
	}
}

func TestUnavailable(t *testing.T) {
	a := consultest.Start(t)
	s, err := Open(Options{Address: a.Addr, Prefix: "down", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sess, err := s.NewSession(context.Background(), "host", MinSessionTTL)
	if err != nil {
		t.Fatal(err)
	}
	a.Stop()

	ctx := context.Background()
	calls := map[string]func() error{
		"Get":  func() error { _, err := s.Get("k"); return err },
		"List": func() error { _, err := s.List(""); return err },
		"Update": func() error {
			return s.Update("k", func([]byte) ([]byte, error) { return []byte("v"), nil })
		},
		"Watch":      func() error { _, _, err := s.Watch(ctx, "", 5, time.Second); return err },
		"NewSession": func() error { _, err := s.NewSession(ctx, "host", MinSessionTTL); return err },
		"Resume":     func() error { _, err := s.ResumeSession(ctx, sess.ID()); return err },
		"Put":        func() error { return sess.Put(ctx, "k", []byte("v")) },
		"Destroy":    func() error { return sess.Destroy(ctx) },
	}
	for name, call := range calls {
		start := time.Now()
		err := call()
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s with consul stopped: %v, want ErrUnavailable", name, err)
			continue
		}
		if want := "consul at " + a.Addr + " unreachable: "; !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %q does not say %q", name, err, want)
		}
		// The cause is kept: refused on a new connection; EOF or a reset on
		// a kept-alive one the stopped agent closed.
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
			t.Errorf("%s: %q hides the cause", name, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s took %s", name, d)
		}
		t.Logf("%s: %v", name, err)
	}
}

// A Consul that accepts connections and never answers: every call gives up
// within its timeout.
func TestUnavailableTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	const timeout = 500 * time.Millisecond
	s, err := Open(Options{Address: l.Addr().String(), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for name, tc := range map[string]struct {
		call  func() error
		limit time.Duration
	}{
		"Get": {func() error { _, err := s.Get("k"); return err }, timeout},
		"Update": {func() error {
			return s.Update("k", func([]byte) ([]byte, error) { return []byte("v"), nil })
		}, timeout},
		"NewSession": {func() error { _, err := s.NewSession(ctx, "h", MinSessionTTL); return err }, timeout},
		// A blocking query may last its wait (+1/16), then the timeout.
		"Watch": {func() error { _, _, err := s.Watch(ctx, "", 5, time.Second); return err }, time.Second + timeout},
	} {
		start := time.Now()
		err := tc.call()
		d := time.Since(start)
		if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "unreachable") {
			t.Errorf("%s: %v, want ErrUnavailable", name, err)
		}
		if d < tc.limit/2 || d > tc.limit+time.Second {
			t.Errorf("%s returned after %s, want about %s", name, d, tc.limit)
		}
		t.Logf("%s after %s: %v", name, d.Round(time.Millisecond), err)
	}
}

// With ACLs on and deny by default, a missing or unknown token is an error
// that names the ACL problem (and counts as unavailable: nothing can be
// read); the right token works.
func TestACLRefused(t *testing.T) {
	const root = "9f5a3a53-4bd4-4a2d-a7e0-1f1a6e0a7a11"
	a := consultest.StartACL(t, root)
	for _, token := range []string{"", "0b9f5c1e-1111-2222-3333-444455556666"} {
		t.Setenv("CONSUL_HTTP_TOKEN", token)
		s, err := Open(Options{Address: a.Addr})
		if err != nil {
			t.Fatal(err)
		}
		for name, call := range map[string]func() error{
			"Get": func() error { _, err := s.Get("k"); return err },
			"Update": func() error {
				return s.Update("k", func([]byte) ([]byte, error) { return []byte("v"), nil })
			},
			"NewSession": func() error { _, err := s.NewSession(context.Background(), "h", MinSessionTTL); return err },
		} {
			err := call()
			if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "ACL token") ||
				!strings.Contains(err.Error(), "CONSUL_HTTP_TOKEN") {
				t.Errorf("token %q, %s: %v; want an ACL error", token, name, err)
			}
			t.Logf("token %q, %s: %v", token, name, err)
		}
		s.Close()
	}
	t.Setenv("CONSUL_HTTP_TOKEN", root)
	s, err := Open(Options{Address: a.Addr})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Update("k", func([]byte) ([]byte, error) { return []byte("v"), nil }); err != nil {
		t.Fatalf("with the management token: %v", err)
	}
}

// An outage is warned about once, however many requests fail, and its end
// is said once; a second outage is warned about again.
func TestOutageLoggedOnce(t *testing.T) {
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "No cluster leader", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("[]"))
	}))
	defer srv.Close()
	var logs bytes.Buffer
	s, err := Open(Options{Address: srv.URL, Timeout: time.Second, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	list := func(n int) {
		for range n {
			s.List("x/")
		}
	}
	list(2)
	down.Store(true)
	list(5)
	down.Store(false)
	list(2)
	srv.CloseClientConnections()
	srv.Listener.Close() // connection refused from now on
	list(3)
	got := logs.String()
	if w, i := strings.Count(got, "level=WARN"), strings.Count(got, "level=INFO"); w != 2 || i != 1 ||
		strings.Count(got, "consul unreachable") != 2 || !strings.Contains(got, "consul reachable again") || !strings.Contains(got, "fix:") {
		t.Fatalf("two outages, one recovery: %d warnings, %d infos, want 2 and 1:\n%s", w, i, got)
	}
	t.Logf("log:\n%s", got)
}
