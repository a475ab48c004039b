// Package store keeps vxbridge's state behind one small interface: an
// embedded bbolt file on a single host, or a cluster-wide Consul KV
// (store/consul). Keys are slash-separated paths
// ("ipam/local/pools/10.0.0.0-24"); values are opaque bytes (JSON in
// practice), up to a few hundred KB.
//
// Store is the contract every backend meets. What only a shared backend
// can do is expressed as small optional interfaces (Watcher, Sessions) that
// callers discover with a type assertion; bbolt implements neither.
package store

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by Get for a key that does not exist.
var ErrNotFound = errors.New("key not found")

// ErrUnavailable says the backend cannot be used right now: it cannot be
// reached, answers too slowly, has no leader, or refuses this client's
// credentials. Backends wrap it with the cause and the address
// ("consul at 127.0.0.1:8500 unreachable: ..."). A caller that gets it must
// not act on what it could not read (reconciliation stands down) and may
// retry later. A write that fails with it may or may not have happened.
var ErrUnavailable = errors.New("store unavailable")

// ErrSessionGone says a session has ended (its TTL ran out, or it was
// destroyed): the keys it held are gone or about to go. Create a new
// session and write them again.
var ErrSessionGone = errors.New("session gone")

// Store is the state backend. Every method is safe for concurrent use and
// every write is durable when it returns. Every call returns within a
// bounded time.
type Store interface {
	// Get returns the value of key, or ErrNotFound. A key written with an
	// empty value is present: its value is a non-nil empty slice.
	Get(key string) ([]byte, error)
	// List returns every key that starts with prefix (a plain string
	// prefix: "a/" does not match "ab/1") with its value; an empty map
	// when there is none.
	List(prefix string) (map[string][]byte, error)
	// Update reads key (nil when absent), calls fn with the value and
	// writes what fn returns atomically: nil deletes the key, an error from
	// fn aborts without writing and is returned as is. On a store shared by
	// several hosts, fn may run more than once (compare-and-swap retry), so
	// it must be pure.
	Update(key string, fn func(old []byte) ([]byte, error)) error
	// Close releases the backend.
	Close() error
}

// Watcher is a Store that can wait for changes (Consul's blocking queries).
type Watcher interface {
	// Watch returns every key below prefix (as List) and the index of that
	// state. With index 0 it answers at once. Otherwise it blocks until
	// something below prefix may have changed since index, wait has passed,
	// or ctx ends (then it returns ctx's error); wait <= 0 lets the backend
	// choose (Consul: 5 minutes). The set returned is always
	// the whole current one; the same index back means nothing changed
	// before wait ran out. A new index does not promise a change (compare
	// the sets), and it may be lower than the one given (the backend's
	// state was reset): pass whatever came back to the next call. Errors
	// wrap ErrUnavailable when the backend cannot be used; wait a little
	// before calling again.
	Watch(ctx context.Context, prefix string, index uint64, wait time.Duration) (map[string][]byte, uint64, error)
}

// Sessions is a Store whose keys can be tied to the liveness of their
// writer: a key put through a Session disappears when the session ends, so
// a host's advertisements vanish when the host dies.
type Sessions interface {
	// NewSession creates a session that ends ttl after its last renewal
	// (the backend may allow some grace beyond that) and starts renewing it
	// in the background. name says who holds it (e.g. the host name).
	NewSession(ctx context.Context, name string, ttl time.Duration) (Session, error)
	// ResumeSession takes over a session that an earlier process created
	// (its ID kept across a restart) and renews it from now on, so the keys
	// it holds survive the restart. It fails with ErrSessionGone when that
	// session has already ended.
	ResumeSession(ctx context.Context, id string) (Session, error)
}

// Session is a live session, renewed in the background until Close or
// Destroy, or until the backend says it has ended.
type Session interface {
	// ID identifies the session (keep it to resume after a restart).
	ID() string
	// Put writes key = val held by this session: the key is deleted when
	// the session ends. It fails with ErrSessionGone if the session has
	// ended, and with an error naming the holder if another session holds
	// key. Plain Store.Update may still change or delete the key.
	Put(ctx context.Context, key string, val []byte) error
	// Done is closed when the session stops being renewed: Err then says
	// why (ErrSessionGone when the backend ended it; nil after Close or
	// Destroy). A holder that finds its session gone creates a new one
	// and puts its keys again.
	Done() <-chan struct{}
	// Err is nil while the session is renewed; see Done.
	Err() error
	// Close stops renewing without ending the session: its keys stay until
	// the TTL runs out, so a restarted process can ResumeSession before
	// then.
	Close()
	// Destroy ends the session now, deleting the keys it holds.
	Destroy(ctx context.Context) error
}
