package consul

import (
	"testing"

	"github.com/vxbridge/vxbridge/store/consul/consultest"
)

// The tests run a real Consul agent (consultest): one shared by the tests
// that do not stop it, stopped by TestMain.
func TestMain(m *testing.M) { consultest.Main(m) }

// open returns a Store on a for one test, under its own prefix.
func open(t *testing.T, a *consultest.Agent, prefix string) *Store {
	t.Helper()
	s, err := Open(Options{Address: a.Addr, Prefix: consultest.Prefix(t, prefix)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
