package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

func TestBoltUpdateGetListDelete(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("a/1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a missing key: %v, want ErrNotFound", err)
	}
	for _, k := range []string{"a/1", "a/2", "b/1"} {
		if err := s.Update(k, func(old []byte) ([]byte, error) { return []byte("v" + k), nil }); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.List("a/")
	if err != nil || len(got) != 2 || string(got["a/2"]) != "va/2" {
		t.Fatalf("List(a/) = %v, %v", got, err)
	}
	// An error from fn writes nothing.
	boom := errors.New("boom")
	if err := s.Update("a/1", func([]byte) ([]byte, error) { return []byte("x"), boom }); !errors.Is(err, boom) {
		t.Fatalf("Update error: %v", err)
	}
	// nil deletes.
	if err := s.Update("a/2", func([]byte) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// What was written survives a reopen.
	s, err = OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.Get("a/1"); err != nil || string(v) != "va/1" {
		t.Fatalf("after reopen a/1 = %q, %v", v, err)
	}
	if _, err := s.Get("a/2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted key a/2 is back: %v", err)
	}
}

func TestBoltUpdateIsAtomic(t *testing.T) {
	s, err := OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Update("n", func(old []byte) ([]byte, error) {
				var n int
				fmt.Sscan(string(old), &n)
				return []byte(fmt.Sprint(n + 1)), nil
			})
		}()
	}
	wg.Wait()
	if v, _ := s.Get("n"); string(v) != "50" {
		t.Fatalf("50 concurrent increments gave %s", v)
	}
}
