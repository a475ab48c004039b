package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucket = []byte("vxbridge")

// Bolt is a Store in one bbolt file: single host, no other service needed.
type Bolt struct {
	db *bolt.DB
}

// OpenBolt opens (creating if needed) the bbolt file at path. A second
// process holding the file makes it fail after a short wait rather than hang.
func OpenBolt(path string) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("init state %s: %w", path, err)
	}
	return &Bolt{db: db}, nil
}

// Get implements Store.
func (b *Bolt) Get(key string) ([]byte, error) {
	var val []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucket).Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		val = bytes.Clone(v)
		return nil
	})
	return val, err
}

// List implements Store.
func (b *Bolt) List(prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			out[string(k)] = bytes.Clone(v)
		}
		return nil
	})
	return out, err
}

// Update implements Store. bbolt serialises writers, so fn runs once.
func (b *Bolt) Update(key string, fn func(old []byte) ([]byte, error)) error {
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
}

// Close implements Store.
func (b *Bolt) Close() error { return b.db.Close() }
