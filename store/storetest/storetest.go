// Package storetest is the conformance suite every store.Store backend
// passes: the same tests run against bbolt and Consul, so callers can rely
// on one contract whatever the backend.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vxbridge/vxbridge/store"
)

// Run runs the suite. newStore returns an empty store for one subtest (the
// caller closes it, e.g. with t.Cleanup).
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"GetAbsent", testGetAbsent},
		{"UpdateAbsentSeesNil", testUpdateAbsentSeesNil},
		{"UpdateSeesOld", testUpdateSeesOld},
		{"EmptyValueIsPresent", testEmptyValue},
		{"DeleteViaNil", testDeleteViaNil},
		{"FnErrorWritesNothing", testFnError},
		{"ListPrefix", testListPrefix},
		{"KeyCharacters", testKeyCharacters},
		{"ValuesAreCopies", testValuesAreCopies},
		{"LargeValue", testLargeValue},
		{"ConcurrentIncrements", testConcurrentIncrements},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

func put(t *testing.T, s store.Store, key, val string) {
	t.Helper()
	if err := s.Update(key, func([]byte) ([]byte, error) { return []byte(val), nil }); err != nil {
		t.Fatalf("Update(%q): %v", key, err)
	}
}

func mustGet(t *testing.T, s store.Store, key string) []byte {
	t.Helper()
	v, err := s.Get(key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return v
}

func wantAbsent(t *testing.T, s store.Store, key string) {
	t.Helper()
	if v, err := s.Get(key); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, v, err)
	}
}

func testGetAbsent(t *testing.T, s store.Store) {
	wantAbsent(t, s, "a/missing")
	if _, err := s.Get("a/missing"); errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("a missing key reads as an unavailable store: %v", err)
	}
}

func testUpdateAbsentSeesNil(t *testing.T, s store.Store) {
	calls := 0
	err := s.Update("a/new", func(old []byte) ([]byte, error) {
		calls++
		if old != nil {
			return nil, fmt.Errorf("fn got %q for an absent key, want nil", old)
		}
		return []byte("v1"), nil
	})
	if err != nil || calls == 0 {
		t.Fatalf("Update: %v (fn called %d times)", err, calls)
	}
	if v := mustGet(t, s, "a/new"); string(v) != "v1" {
		t.Fatalf("Get = %q, want v1", v)
	}
}

func testUpdateSeesOld(t *testing.T, s store.Store) {
	put(t, s, "a/k", "v1")
	err := s.Update("a/k", func(old []byte) ([]byte, error) {
		if string(old) != "v1" {
			return nil, fmt.Errorf("fn got %q, want v1", old)
		}
		return append(old, "+v2"...), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v := mustGet(t, s, "a/k"); string(v) != "v1+v2" {
		t.Fatalf("Get = %q, want v1+v2", v)
	}
}

func testEmptyValue(t *testing.T, s store.Store) {
	if err := s.Update("a/empty", func([]byte) ([]byte, error) { return []byte{}, nil }); err != nil {
		t.Fatal(err)
	}
	if v := mustGet(t, s, "a/empty"); v == nil || len(v) != 0 {
		t.Fatalf("Get of an empty value = %#v, want a non-nil empty slice", v)
	}
	err := s.Update("a/empty", func(old []byte) ([]byte, error) {
		if old == nil {
			return nil, errors.New("fn got nil for a present empty value")
		}
		return old, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := s.List("a/"); err != nil || len(l) != 1 || l["a/empty"] == nil {
		t.Fatalf("List = %#v, %v; want a/empty with a non-nil empty value", l, err)
	}
}

func testDeleteViaNil(t *testing.T, s store.Store) {
	put(t, s, "a/k", "v")
	if err := s.Update("a/k", func([]byte) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	wantAbsent(t, s, "a/k")
	if l, err := s.List("a/"); err != nil || len(l) != 0 {
		t.Fatalf("List after delete = %q, %v", l, err)
	}
	// Deleting what is not there is no error.
	if err := s.Update("a/k", func([]byte) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatalf("deleting an absent key: %v", err)
	}
	wantAbsent(t, s, "a/k")
}

func testFnError(t *testing.T, s store.Store) {
	boom := errors.New("boom")
	put(t, s, "a/k", "v")
	for _, key := range []string{"a/k", "a/absent"} {
		err := s.Update(key, func([]byte) ([]byte, error) { return []byte("written"), boom })
		if !errors.Is(err, boom) {
			t.Fatalf("Update(%q) = %v, want fn's error", key, err)
		}
		if errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrNotFound) {
			t.Fatalf("fn's error is mistaken for a store error: %v", err)
		}
	}
	if v := mustGet(t, s, "a/k"); string(v) != "v" {
		t.Fatalf("a/k = %q after a failed fn, want v", v)
	}
	wantAbsent(t, s, "a/absent")
}

func testListPrefix(t *testing.T, s store.Store) {
	for _, k := range []string{"a/1", "a/2", "a/sub/3", "ab/1", "b/1"} {
		put(t, s, k, "v"+k)
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"a/", []string{"a/1", "a/2", "a/sub/3"}},
		{"a/sub/", []string{"a/sub/3"}},
		{"a", []string{"a/1", "a/2", "a/sub/3", "ab/1"}},
		{"b/", []string{"b/1"}},
		{"c/", nil},
		{"", []string{"a/1", "a/2", "a/sub/3", "ab/1", "b/1"}},
	} {
		got, err := s.List(tc.prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", tc.prefix, err)
		}
		want := map[string][]byte{}
		for _, k := range tc.want {
			want[k] = []byte("v" + k)
		}
		if got == nil || !maps.EqualFunc(got, want, bytes.Equal) {
			t.Fatalf("List(%q) = %q, want %q", tc.prefix, got, want)
		}
	}
}

// Keys the IPAM writes: colons (IPv6), dots, dashes; and a few characters
// that need escaping on an HTTP backend.
func testKeyCharacters(t *testing.T, s store.Store) {
	keys := []string{"k/fd7a:1::-64", "k/10.0.0.0-24", "k/a b", "k/100%", "k/q?x=1", "k/h#1", "k/é"}
	for _, k := range keys {
		put(t, s, k, k)
	}
	for _, k := range keys {
		if v := mustGet(t, s, k); string(v) != k {
			t.Fatalf("Get(%q) = %q", k, v)
		}
	}
	if l, err := s.List("k/"); err != nil || len(l) != len(keys) {
		t.Fatalf("List(k/) = %q, %v; want the %d keys", l, err, len(keys))
	}
}

func testValuesAreCopies(t *testing.T, s store.Store) {
	val := []byte("abc")
	if err := s.Update("a/k", func([]byte) ([]byte, error) { return val, nil }); err != nil {
		t.Fatal(err)
	}
	val[0] = 'X'
	v := mustGet(t, s, "a/k")
	if string(v) != "abc" {
		t.Fatalf("the store kept the caller's slice: %q", v)
	}
	v[0] = 'Y'
	l, _ := s.List("a/")
	l["a/k"][1] = 'Z'
	if v := mustGet(t, s, "a/k"); string(v) != "abc" {
		t.Fatalf("a returned slice aliases the store: %q", v)
	}
}

func testLargeValue(t *testing.T, s store.Store) {
	big := make([]byte, 256<<10)
	for i := range big {
		big[i] = byte(i*7 + i>>8) // every byte value, zeros included
	}
	if err := s.Update("a/big", func([]byte) ([]byte, error) { return big, nil }); err != nil {
		t.Fatal(err)
	}
	if v := mustGet(t, s, "a/big"); !bytes.Equal(v, big) {
		t.Fatalf("a %d-byte value came back as %d bytes, not equal", len(big), len(v))
	}
	err := s.Update("a/big", func(old []byte) ([]byte, error) {
		if !bytes.Equal(old, big) {
			return nil, errors.New("fn did not get the large value")
		}
		return old[:1000], nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v := mustGet(t, s, "a/big"); !bytes.Equal(v, big[:1000]) {
		t.Fatal("shrinking a large value")
	}
}

// Many writers incrementing one counter lose no increment: this is what
// proves Update is atomic (a compare-and-swap loop on a shared store).
func testConcurrentIncrements(t *testing.T, s store.Store) {
	const writers, each = 20, 5
	var calls atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				err := s.Update("n", func(old []byte) ([]byte, error) {
					calls.Add(1)
					n := 0
					if old != nil {
						var err error
						if n, err = strconv.Atoi(string(old)); err != nil {
							return nil, err
						}
					}
					return []byte(strconv.Itoa(n + 1)), nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if v := mustGet(t, s, "n"); string(v) != strconv.Itoa(writers*each) {
		t.Fatalf("%d concurrent increments gave %s", writers*each, v)
	}
	t.Logf("%d increments, fn ran %d times", writers*each, calls.Load())
}
