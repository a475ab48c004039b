// Package store keeps vxbridge's state behind one small interface: an
// embedded bbolt file on a single host now, a cluster-wide Consul KV later.
// Keys are slash-separated paths ("ipam/local/pools/10.0.0.0-24"); values
// are opaque bytes (JSON in practice).
package store

import "errors"

// ErrNotFound is returned by Get for a key that does not exist.
var ErrNotFound = errors.New("key not found")

// Store is the state backend. Every method is safe for concurrent use and
// every write is durable when it returns.
type Store interface {
	// Get returns the value of key, or ErrNotFound.
	Get(key string) ([]byte, error)
	// List returns every key below prefix with its value.
	List(prefix string) (map[string][]byte, error)
	// Update reads key (nil when absent), calls fn with the value and
	// writes what fn returns atomically: nil deletes the key, an error from
	// fn aborts without writing. On a store shared by several hosts, fn may
	// run more than once (compare-and-swap retry), so it must be pure.
	Update(key string, fn func(old []byte) ([]byte, error)) error
	// Close releases the backend.
	Close() error
}
