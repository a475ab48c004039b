package store_test

import (
	"path/filepath"
	"testing"

	"github.com/vxbridge/vxbridge/store"
	"github.com/vxbridge/vxbridge/store/storetest"
)

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
