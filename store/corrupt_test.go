package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A damaged state file is an error naming the file and the way out, never
// a panic; a file held by another process is ErrLocked.
func TestOpenBoltDamagedFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	s, err := OpenBolt(good)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := s.Update(strings.Repeat("k", i+1), func([]byte) ([]byte, error) { return make([]byte, 3000), nil }); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	img, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	page := 4096
	cases := map[string]func([]byte) []byte{
		"garbage": func([]byte) []byte { return []byte(strings.Repeat("not a bbolt file ", 1000)) },
		"pages after the meta pages zeroed": func(b []byte) []byte {
			for i := 2 * page; i < len(b); i++ {
				b[i] = 0
			}
			return b
		},
		"half the file": func(b []byte) []byte { return b[:len(b)/2] },
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			if err := os.WriteFile(path, damage(append([]byte(nil), img...)), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := OpenBolt(path)
			if err == nil {
				// Some damage only shows on use: it must then be an error too.
				_, err = s.List("")
				s.Close()
				if err == nil {
					t.Fatal("the damage went unnoticed")
				}
			}
			t.Log(err)
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "mv "+path) {
				t.Fatalf("error %q does not name the file and the way out", err)
			}
		})
	}

	t.Run("held by another process", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "state.db")
		first, err := OpenBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		if _, err := OpenBolt(path); !errors.Is(err, ErrLocked) {
			t.Fatalf("second open: %v, want ErrLocked", err)
		}
	})
}
