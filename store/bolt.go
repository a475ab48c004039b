package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var bucket = []byte("vxbridge")

// Bolt is a Store in one bbolt file: single host, no other service needed.
type Bolt struct {
	db   *bolt.DB
	path string
}

// ErrLocked is returned by OpenBolt when another process holds the file.
var ErrLocked = errors.New("held by another vxbridge process")

// OpenBolt opens (creating if needed) the bbolt file at path. A second
// process holding the file makes it fail with ErrLocked after a short wait
// rather than hang. A damaged file is an error that names it and the way
// out, never a crash.
func OpenBolt(path string) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	b := &Bolt{path: path}
	err := b.safe(func() (err error) {
		b.db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
		if errors.Is(err, bolterrors.ErrTimeout) {
			return fmt.Errorf("open state %s: %w", path, ErrLocked)
		}
		if err != nil {
			return b.corrupt(err)
		}
		// Damage in data pages shows only when they are read, as a panic
		// deep in bbolt: read every record now (a few KB per network), so
		// it is found at start.
		err = b.db.Update(func(tx *bolt.Tx) error {
			if err := tx.ForEach(func(_ []byte, bk *bolt.Bucket) error {
				return bk.ForEach(func(_, _ []byte) error { return nil })
			}); err != nil {
				return b.corrupt(err)
			}
			_, err := tx.CreateBucketIfNotExists(bucket)
			return err
		})
		if err != nil {
			b.db.Close()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// safe runs fn, turning a panic of bbolt's over a damaged page into an
// error naming the file.
func (b *Bolt) safe(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = b.corrupt(fmt.Errorf("%v", p))
		}
	}()
	return fn()
}

func (b *Bolt) corrupt(cause error) error {
	return fmt.Errorf("state file %s is unreadable (%w): move it aside (mv %s %s.bad) and restart the plugin; "+
		"vxbridge then rebuilds its records from dockerd and the kernel", b.path, cause, b.path, b.path)
}

// Get implements Store.
func (b *Bolt) Get(key string) ([]byte, error) {
	var val []byte
	err := b.safe(func() error {
		return b.db.View(func(tx *bolt.Tx) error {
			v := tx.Bucket(bucket).Get([]byte(key))
			if v == nil {
				return ErrNotFound
			}
			val = bytes.Clone(v)
			return nil
		})
	})
	return val, err
}

// List implements Store.
func (b *Bolt) List(prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := b.safe(func() error {
		return b.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucket).Cursor()
			p := []byte(prefix)
			for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
				out[string(k)] = bytes.Clone(v)
			}
			return nil
		})
	})
	return out, err
}

// Update implements Store. bbolt serialises writers, so fn runs once.
func (b *Bolt) Update(key string, fn func(old []byte) ([]byte, error)) error {
	return b.safe(func() error {
		return b.db.Update(func(tx *bolt.Tx) error {
			bk := tx.Bucket(bucket)
			old := bk.Get([]byte(key))
			if old != nil {
				old = bytes.Clone(old)
			}
			val, err := fn(old)
			if err != nil {
				return err
			}
			if val == nil {
				return bk.Delete([]byte(key))
			}
			return bk.Put([]byte(key), val)
		})
	})
}

// Close implements Store.
func (b *Bolt) Close() error { return b.db.Close() }
