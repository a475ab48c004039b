package store

// Failed is a Store that could not be opened: every call answers the
// reason. The plugin serves on it rather than exiting, so dockerd gets a
// clear error from each request instead of a socket that never appears
// (and a managed plugin that exits at start leaves its containerd shim
// behind, which blocks every later enable).
type Failed struct{ Err error }

// Get implements Store.
func (f Failed) Get(string) ([]byte, error) { return nil, f.Err }

// List implements Store.
func (f Failed) List(string) (map[string][]byte, error) { return nil, f.Err }

// Update implements Store.
func (f Failed) Update(string, func([]byte) ([]byte, error)) error { return f.Err }

// Close implements Store.
func (f Failed) Close() error { return nil }
