package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/vxbridge/vxbridge/store"
)

// Consul's bounds for a session TTL.
const (
	MinSessionTTL = 10 * time.Second
	MaxSessionTTL = 24 * time.Hour
)

// NewSession implements store.Sessions. The session has no health checks,
// only the TTL (Consul may wait up to twice the TTL before ending it), so
// a restart of the Consul agent or a change of leader does not end it.
// Its behaviour is "delete": the keys it holds are deleted when it ends.
// Its lock delay is minimal, so a host that lost its session can put its
// keys again at once with a new one.
func (s *Store) NewSession(ctx context.Context, name string, ttl time.Duration) (store.Session, error) {
	if ttl < MinSessionTTL || ttl > MaxSessionTTL {
		return nil, fmt.Errorf("session TTL %s: must be between %s and %s", ttl, MinSessionTTL, MaxSessionTTL)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, s.timeout, errNoAnswer)
	defer cancel()
	id, _, err := s.client.Session().CreateNoChecks(&api.SessionEntry{
		Name:      name,
		TTL:       ttl.String(),
		Behavior:  api.SessionBehaviorDelete,
		LockDelay: time.Millisecond,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, s.fail(ctx, "create session", err)
	}
	s.answered()
	return s.startSession(id, ttl), nil
}

// ResumeSession implements store.Sessions.
func (s *Store) ResumeSession(ctx context.Context, id string) (store.Session, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, s.timeout, errNoAnswer)
	defer cancel()
	ttl, err := s.renew(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.startSession(id, ttl), nil
}

// renew renews session id once and returns its TTL.
func (s *Store) renew(ctx context.Context, id string) (time.Duration, error) {
	// Through Raw: Session().Renew hides the status of a failed renewal.
	var entries []*api.SessionEntry
	_, err := s.client.Raw().Write("/v1/session/renew/"+id, nil, &entries, (&api.WriteOptions{}).WithContext(ctx))
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound || err == nil && len(entries) == 0 {
		s.answered()
		return 0, fmt.Errorf("session %s: %w", id, store.ErrSessionGone)
	}
	if err != nil {
		return 0, s.fail(ctx, "renew session "+id, err)
	}
	s.answered()
	ttl, err := time.ParseDuration(entries[0].TTL)
	if err != nil {
		return 0, fmt.Errorf("session %s: TTL %q from consul: %w", id, entries[0].TTL, err)
	}
	return ttl, nil
}

// session is a store.Session renewed by one goroutine.
type session struct {
	s    *Store
	id   string
	ttl  time.Duration
	stop context.CancelFunc // ends the renewal (Close, Destroy, Store.Close)
	done chan struct{}

	mu  sync.Mutex
	err error
}

func (s *Store) startSession(id string, ttl time.Duration) *session {
	ctx, stop := context.WithCancel(s.stop)
	se := &session{s: s, id: id, ttl: ttl, stop: stop, done: make(chan struct{})}
	s.renewals.Go(func() { se.renewLoop(ctx) })
	return se
}

// renewLoop renews every half TTL, as Consul advises, and every second
// while Consul cannot be reached. It never gives up on its own: only
// Consul saying the session is gone ends it, since a session can outlive
// an outage (a new leader restarts the TTLs).
func (se *session) renewLoop(ctx context.Context) {
	defer close(se.done)
	wait, failing := se.ttl/2, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		rctx, cancel := context.WithTimeoutCause(ctx, se.s.timeout, errNoAnswer)
		ttl, err := se.s.renew(rctx, se.id)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, store.ErrSessionGone):
			se.s.log.Warn("consul session ended", "session", se.id)
			se.mu.Lock()
			se.err = err
			se.mu.Unlock()
			return
		case err != nil:
			if !failing {
				// Consul unreachable is warned about once by the store.
				lvl := slog.LevelWarn
				if errors.Is(err, store.ErrUnavailable) {
					lvl = slog.LevelDebug
				}
				se.s.log.Log(ctx, lvl, "consul session renewal failed, retrying every second", "session", se.id, "err", err)
			}
			wait, failing = time.Second, true
		default:
			if failing {
				se.s.log.Debug("consul session renewed again", "session", se.id)
			}
			wait, failing = ttl/2, false
		}
	}
}

func (se *session) ID() string            { return se.id }
func (se *session) Done() <-chan struct{} { return se.done }

func (se *session) Err() error {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.err
}

func (se *session) Close() {
	se.stop()
	<-se.done
}

func (se *session) Destroy(ctx context.Context) error {
	se.Close()
	ctx, cancel := context.WithTimeoutCause(ctx, se.s.timeout, errNoAnswer)
	defer cancel()
	if _, err := se.s.client.Session().Destroy(se.id, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return se.s.fail(ctx, "destroy session "+se.id, err)
	}
	return nil
}

// Put implements store.Session with a KV acquire.
func (se *session) Put(ctx context.Context, key string, val []byte) error {
	ctx, cancel := context.WithTimeoutCause(ctx, se.s.timeout, errNoAnswer)
	defer cancel()
	k := se.s.prefix + key
	ok, _, err := se.s.kv.Acquire(&api.KVPair{Key: k, Value: val, Session: se.id}, (&api.WriteOptions{}).WithContext(ctx))
	// Consul refuses an unknown session with a 500 "invalid session".
	var status api.StatusError
	if errors.As(err, &status) && strings.Contains(status.Body, "invalid session") {
		return fmt.Errorf("put %q: session %s: %w", key, se.id, store.ErrSessionGone)
	}
	if err != nil {
		return se.s.fail(ctx, fmt.Sprintf("put %q", key), err)
	}
	se.s.answered()
	if ok {
		return nil
	}
	// Refused: the key has another holder, or is in a lock delay.
	pair, _, err := se.s.kv.Get(k, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return se.s.fail(ctx, fmt.Sprintf("put %q", key), err)
	}
	if pair != nil && pair.Session != "" && pair.Session != se.id {
		return fmt.Errorf("put %q: held by another session (%s)", key, pair.Session)
	}
	// Refused for a lock delay: after this session's own end (then it is
	// gone) or after a previous holder's.
	info, _, err := se.s.client.Session().Info(se.id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return se.s.fail(ctx, fmt.Sprintf("put %q", key), err)
	}
	if info == nil {
		return fmt.Errorf("put %q: session %s: %w", key, se.id, store.ErrSessionGone)
	}
	return fmt.Errorf("put %q: consul refuses it to session %s during the lock delay after its previous holder ended; retry", key, se.id)
}
