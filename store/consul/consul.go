// Package consul is the cluster-wide store.Store: Consul's KV, with
// blocking queries for store.Watcher and sessions for store.Sessions. It is
// the only package that imports the Consul client.
//
// It is configured the Consul way: api.DefaultConfig reads
// CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN(_FILE), CONSUL_HTTP_SSL,
// CONSUL_HTTP_SSL_VERIFY, CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT,
// CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME, CONSUL_HTTP_AUTH.
package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/vxbridge/vxbridge/store"
)

// DefaultPrefix is where vxbridge keeps its keys in Consul's KV.
const DefaultPrefix = "vxbridge/"

// DefaultTimeout bounds every request to Consul (a blocking query gets its
// wait time on top).
const DefaultTimeout = 10 * time.Second

// Options configure Open. The zero value is usable.
type Options struct {
	// Address overrides CONSUL_HTTP_ADDR ("host:port", "https://host:port"
	// or "unix:///path"); empty keeps the environment's (default
	// 127.0.0.1:8500).
	Address string
	// Prefix is prepended to every key, so several clusters or programs can
	// share one Consul; "" means DefaultPrefix. A "/" is added if missing.
	Prefix string
	// Timeout bounds each request; 0 means DefaultTimeout.
	Timeout time.Duration
	// Log gets one warning when Consul stops answering and one line when
	// it answers again; nil means slog.Default().
	Log *slog.Logger
}

// Store is a store.Store, store.Watcher and store.Sessions on Consul.
type Store struct {
	client  *api.Client
	http    *http.Client
	kv      *api.KV
	addr    string // for error messages: host:port as configured
	prefix  string
	timeout time.Duration
	// stop ends background work (session renewals) on Close; renewals
	// counts it.
	stop     context.Context
	cancel   context.CancelFunc
	renewals sync.WaitGroup

	log    *slog.Logger
	mu     sync.Mutex
	downAt time.Time // when Consul stopped answering; zero while it answers
}

var (
	_ store.Store    = (*Store)(nil)
	_ store.Watcher  = (*Store)(nil)
	_ store.Sessions = (*Store)(nil)
)

// Open returns a Store for the Consul agent the environment (or
// opts.Address) names. It does not contact Consul: the first call that
// cannot reach it fails with store.ErrUnavailable.
func Open(opts Options) (*Store, error) {
	cfg := api.DefaultConfig()
	if opts.Address != "" {
		cfg.Address = opts.Address
	}
	addr := cfg.Address
	if _, rest, ok := strings.Cut(addr, "://"); ok {
		addr = rest
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", addr, err)
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	stop, cancel := context.WithCancel(context.Background())
	return &Store{
		client: client, http: cfg.HttpClient, kv: client.KV(), addr: addr, prefix: prefix,
		timeout: timeout, stop: stop, cancel: cancel, log: log,
	}, nil
}

// Address is the Consul agent's address (host:port) this store talks to;
// the overlay takes the local address that reaches it for its tunnels.
func (s *Store) Address() string { return s.addr }

// Close implements store.Store. It stops renewing the sessions made by
// this Store without destroying them (see store.Session.Close).
func (s *Store) Close() error {
	s.cancel()
	s.renewals.Wait()
	s.http.CloseIdleConnections()
	return nil
}

// Get implements store.Store.
func (s *Store) Get(key string) ([]byte, error) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), s.timeout, errNoAnswer)
	defer cancel()
	pair, _, err := s.kv.Get(s.prefix+key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, s.fail(ctx, fmt.Sprintf("get %q", key), err)
	}
	s.answered()
	if pair == nil {
		return nil, store.ErrNotFound
	}
	return value(pair), nil
}

// List implements store.Store.
func (s *Store) List(prefix string) (map[string][]byte, error) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), s.timeout, errNoAnswer)
	defer cancel()
	pairs, _, err := s.kv.List(s.prefix+prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, s.fail(ctx, fmt.Sprintf("list %q", prefix), err)
	}
	s.answered()
	return s.strip(pairs), nil
}

// Watch implements store.Watcher with a blocking query on the prefix.
func (s *Store) Watch(ctx context.Context, prefix string, index uint64, wait time.Duration) (map[string][]byte, uint64, error) {
	// Consul's own bounds: 5 minutes by default, at most 10.
	if wait <= 0 {
		wait = 5 * time.Minute
	}
	wait = min(wait, 10*time.Minute)
	// Consul adds up to wait/16 of jitter to a blocking query.
	ctx, cancel := context.WithTimeoutCause(ctx, wait+wait/16+s.timeout, errNoAnswer)
	defer cancel()
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	pairs, meta, err := s.kv.List(s.prefix+prefix, q)
	if err != nil {
		return nil, 0, s.fail(ctx, fmt.Sprintf("watch %q", prefix), err)
	}
	s.answered()
	// Consul documents that an index of 0 is a bug that makes every later
	// blocking query return at once; it says to use 1 instead.
	return s.strip(pairs), max(meta.LastIndex, 1), nil
}

// Update implements store.Store: a check-and-set loop on the key's
// ModifyIndex (0 when absent, so a concurrent create also conflicts).
func (s *Store) Update(key string, fn func(old []byte) ([]byte, error)) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		done, fnErr, err := s.updateOnce(s.prefix+key, fn)
		switch {
		case fnErr != nil:
			return fnErr
		case err != nil:
			return fmt.Errorf("update %q: %w", key, err)
		case done:
			return nil
		}
		// Someone else wrote in between: read again and rerun fn. Jitter
		// keeps many writers of one key from retrying in lockstep.
		if time.Since(start) > 3*s.timeout {
			return fmt.Errorf("update %q: still conflicting with other writers after %d attempts in %s",
				key, attempt, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(rand.N(time.Duration(min(attempt, 20)) * time.Millisecond))
	}
}

// updateOnce does one round of read, fn, check-and-set. done is false when
// another writer changed the key in between; fnErr is fn's own error.
func (s *Store) updateOnce(k string, fn func(old []byte) ([]byte, error)) (done bool, fnErr, err error) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), s.timeout, errNoAnswer)
	defer cancel()
	pair, _, err := s.kv.Get(k, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, nil, s.fail(ctx, "read", err)
	}
	var old []byte
	var index uint64
	if pair != nil {
		old, index = value(pair), pair.ModifyIndex
	}
	val, fnErr := fn(old)
	if fnErr != nil {
		return false, fnErr, nil
	}
	w := (&api.WriteOptions{}).WithContext(ctx)
	switch {
	case val == nil && pair == nil:
		return true, nil, nil
	case val == nil:
		done, _, err = s.kv.DeleteCAS(&api.KVPair{Key: k, ModifyIndex: index}, w)
	default:
		done, _, err = s.kv.CAS(&api.KVPair{Key: k, Value: val, ModifyIndex: index}, w)
	}
	if err != nil {
		return false, nil, s.fail(ctx, "write", err)
	}
	s.answered()
	return done, nil, nil
}

// value is a pair's value as the Store contract has it: never nil for a
// present key (Consul sends an empty value as null).
func value(p *api.KVPair) []byte {
	if p.Value == nil {
		return []byte{}
	}
	return p.Value
}

// strip turns Consul's pairs into the caller's keys and values.
func (s *Store) strip(pairs api.KVPairs) map[string][]byte {
	out := make(map[string][]byte, len(pairs))
	for _, p := range pairs {
		out[strings.TrimPrefix(p.Key, s.prefix)] = value(p)
	}
	return out
}

// errNoAnswer is the cause of a request's own timeout, to tell it from the
// end of its caller's context.
var errNoAnswer = errors.New("no answer in time")

// fail classifies a failed request. The caller's own cancellation comes
// back as it is; anything that says Consul cannot be used now (no answer
// in time, connection refused, no leader, a refused token) wraps
// store.ErrUnavailable with the address; other answers (a bad request)
// are plain errors.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), errNoAnswer) {
		return fmt.Errorf("%s: %w", op, ctx.Err()) // the caller's own
	}
	var se api.StatusError
	if !errors.As(err, &se) {
		// Drop net/http's "Get \"http://…/v1/kv/…\":": the address and
		// the operation say it better.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if errors.Is(context.Cause(ctx), errNoAnswer) {
			err = errNoAnswer
		}
		return s.unavailable(&unavailableError{s: s, op: op, err: err})
	}
	switch {
	case se.Code == http.StatusForbidden || se.Code == http.StatusUnauthorized:
		return &unavailableError{s: s, op: op, acl: true, err: err}
	case se.Code >= 500:
		return s.unavailable(&unavailableError{s: s, op: op, err: err})
	}
	s.answered()
	return fmt.Errorf("%s: consul at %s: %w", op, s.addr, err)
}

// unavailable notes the start of an outage: one warning per outage, not
// one per request (every watch and renewal retries every second).
func (s *Store) unavailable(e *unavailableError) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.downAt.IsZero() {
		s.downAt = time.Now()
		s.log.Warn("consul unreachable: overlay traffic keeps flowing on the entries this host holds, but overlay "+
			"containers and networks cannot be made and other hosts' changes are not learnt until it answers; "+
			"fix: check the Consul agent (consul members) and CONSUL_HTTP_ADDR", "consul", s.addr, "err", e.err)
	}
	return e
}

// answered notes that Consul answered: the end of an outage, if any.
func (s *Store) answered() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.downAt.IsZero() {
		s.log.Info("consul reachable again", "consul", s.addr, "outage", time.Since(s.downAt).Round(time.Millisecond))
		s.downAt = time.Time{}
	}
}

// unavailableError is store.ErrUnavailable with its cause and a message
// that tells a user where to look.
type unavailableError struct {
	s   *Store
	op  string
	acl bool // Consul refused the token
	err error
}

func (e *unavailableError) Error() string {
	if e.acl {
		return fmt.Sprintf("consul at %s refused the ACL token (CONSUL_HTTP_TOKEN must name a token allowed to "+
			"write keys under %q and sessions): %s: %v", e.s.addr, e.s.prefix, e.op, e.err)
	}
	return fmt.Sprintf("consul at %s unreachable: %s: %v", e.s.addr, e.op, e.err)
}

func (e *unavailableError) Unwrap() []error { return []error{store.ErrUnavailable, e.err} }

// AgentAddress is the address the Consul agent this store talks to
// advertises to its cluster: the host's address on the network the
// cluster shares, which the overlay's tunnels use by default.
func (s *Store) AgentAddress(ctx context.Context) (netip.Addr, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, s.timeout, errNoAnswer)
	defer cancel()
	// Agent().Self takes no context: bound it from here.
	type answer struct {
		self map[string]map[string]interface{}
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		self, err := s.client.Agent().Self()
		ch <- answer{self, err}
	}()
	var self map[string]map[string]interface{}
	select {
	case a := <-ch:
		if a.err != nil {
			return netip.Addr{}, s.fail(ctx, "agent self", a.err)
		}
		self = a.self
	case <-ctx.Done():
		return netip.Addr{}, s.fail(ctx, "agent self", context.Cause(ctx))
	}
	s.answered()
	addr, _ := self["Member"]["Addr"].(string)
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("consul at %s: agent address %q: %w", s.addr, addr, err)
	}
	return a.Unmap(), nil
}
