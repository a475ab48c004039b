// Package plugin serves vxbridge's NetworkDriver and IpamDriver on one unix
// socket, as a managed plugin needs: go-plugins-helpers' network and ipam
// handlers each announce only their own type, so the routes are registered
// here on one mux whose manifest names both.
package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"runtime/debug"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	netapi "github.com/docker/go-plugins-helpers/network"
	"github.com/docker/go-plugins-helpers/sdk"
)

const manifest = `{"Implements": ["NetworkDriver", "IpamDriver"]}`

// vxbridge's own routes, for its CLI: StatePath answers a JSON dump of
// what the plugin holds (networks, endpoints, pools, addresses),
// ReconcilePath reconciles now and answers the report; ListPath,
// PeersPath, DoctorPath and ForgetHostPath serve `vxbridge ls`, `peers`,
// `doctor` and `forget-host`.
const (
	StatePath      = "/VxBridge.State"
	ReconcilePath  = "/VxBridge.Reconcile"
	ListPath       = "/VxBridge.List"
	PeersPath      = "/VxBridge.Peers"
	DoctorPath     = "/VxBridge.Doctor"
	ForgetHostPath = "/VxBridge.ForgetHost"
)

// Own serves one of vxbridge's own paths: body is the request's JSON.
type Own func(body json.RawMessage) (any, error)

// Observer hears of every answered call (metrics); it may be nil.
type Observer func(path string, took time.Duration, err error)

// NewHandler routes every protocol call to d and a, and each of vxbridge's
// own paths to its function in own.
func NewHandler(d netapi.Driver, a ipamapi.Ipam, own map[string]Own, log *slog.Logger, observe Observer) http.Handler {
	mux := http.NewServeMux()
	// dockerd's handshake: which protocols this socket serves.
	mux.HandleFunc("/Plugin.Activate", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
		fmt.Fprintln(w, manifest)
	})
	r := router{mux: mux, log: log, observe: observe}

	route(r, "/NetworkDriver.GetCapabilities", noRequest(d.GetCapabilities))
	route(r, "/NetworkDriver.CreateNetwork", noResult(d.CreateNetwork))
	route(r, "/NetworkDriver.AllocateNetwork", d.AllocateNetwork)
	route(r, "/NetworkDriver.DeleteNetwork", noResult(d.DeleteNetwork))
	route(r, "/NetworkDriver.FreeNetwork", noResult(d.FreeNetwork))
	route(r, "/NetworkDriver.CreateEndpoint", d.CreateEndpoint)
	route(r, "/NetworkDriver.DeleteEndpoint", noResult(d.DeleteEndpoint))
	route(r, "/NetworkDriver.EndpointOperInfo", d.EndpointInfo)
	route(r, "/NetworkDriver.Join", d.Join)
	route(r, "/NetworkDriver.Leave", noResult(d.Leave))
	route(r, "/NetworkDriver.DiscoverNew", noResult(d.DiscoverNew))
	route(r, "/NetworkDriver.DiscoverDelete", noResult(d.DiscoverDelete))
	route(r, "/NetworkDriver.ProgramExternalConnectivity", noResult(d.ProgramExternalConnectivity))
	route(r, "/NetworkDriver.RevokeExternalConnectivity", noResult(d.RevokeExternalConnectivity))

	route(r, "/IpamDriver.GetCapabilities", noRequest(a.GetCapabilities))
	route(r, "/IpamDriver.GetDefaultAddressSpaces", noRequest(a.GetDefaultAddressSpaces))
	route(r, "/IpamDriver.RequestPool", a.RequestPool)
	route(r, "/IpamDriver.ReleasePool", noResult(a.ReleasePool))
	route(r, "/IpamDriver.RequestAddress", a.RequestAddress)
	route(r, "/IpamDriver.ReleaseAddress", noResult(a.ReleaseAddress))

	for path, fn := range own {
		route(r, path, func(body *json.RawMessage) (*any, error) {
			v, err := fn(*body)
			return &v, err
		})
	}
	return mux
}

type router struct {
	mux     *http.ServeMux
	log     *slog.Logger
	observe Observer
}

// empty is the body of a successful call that returns nothing.
type empty struct{}

// route registers one protocol method: decode the JSON request, call fn,
// encode its result or {"Err": …}. A panic becomes an error answer, never a
// dead connection.
func route[Req, Res any](r router, path string, fn func(*Req) (*Res, error)) {
	r.mux.HandleFunc(path, func(w http.ResponseWriter, hr *http.Request) {
		start := time.Now()
		var err error
		defer func() {
			if p := recover(); p != nil {
				r.log.Error("panic in handler", "call", path, "panic", p, "stack", string(debug.Stack()))
				sdk.EncodeResponse(w, netapi.NewErrorResponse(fmt.Sprintf("internal error in %s: %v", path, p)), true)
			}
		}()
		req := new(Req)
		if err = decode(hr.Body, req); err != nil {
			err = fmt.Errorf("malformed request: %w", err)
		} else {
			var res *Res
			if res, err = fn(req); err == nil {
				if res == nil {
					sdk.EncodeResponse(w, empty{}, false)
				} else {
					sdk.EncodeResponse(w, res, false)
				}
				took := time.Since(start)
				r.log.Debug("call", append(ids(req), "call", path, "took", took, "outcome", "ok")...)
				if r.observe != nil {
					r.observe(path, took, nil)
				}
				return
			}
		}
		took := time.Since(start)
		r.log.Warn("call failed", append(ids(req), "call", path, "err", err, "took", took)...)
		if r.observe != nil {
			r.observe(path, took, err)
		}
		sdk.EncodeResponse(w, netapi.NewErrorResponse(err.Error()), true)
	})
}

// errEmptyBody answers a call with arguments that came without a body.
// dockerd does that when it retries a call the plugin did not answer (the
// plugin restarted mid-call): it resends the body it already read, now
// empty. Saying so beats failing later on a zero pool or endpoint ID.
var errEmptyBody = errors.New("empty body (dockerd resends a call with an empty body when it retries a call the plugin did not answer, e.g. across a plugin restart): run the command again")

// decode reads a JSON body. Calls without arguments (req is *struct{}) may
// come with an empty body or JSON null, as dockerd sends them.
func decode(body io.Reader, req any) error {
	b, err := io.ReadAll(io.LimitReader(body, 1<<20))
	if err != nil {
		return err
	}
	if len(b) == 0 {
		switch req.(type) {
		case *struct{}, *json.RawMessage: // no arguments, or vxbridge's own paths
			return nil
		}
		return errEmptyBody
	}
	return json.Unmarshal(b, req)
}

// ids returns the network, endpoint and pool IDs a request names, as log
// attributes: the protocol's request types name them in these fields.
func ids(req any) []any {
	v := reflect.ValueOf(req)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	var out []any
	// Docker's IDs shortened as docker shows them; a pool ID is a prefix.
	for _, f := range []struct {
		field, key string
		max        int
	}{{"NetworkID", "network", 12}, {"EndpointID", "endpoint", 12}, {"PoolID", "pool", 64}} {
		if fv := v.Elem().FieldByName(f.field); fv.IsValid() && fv.Kind() == reflect.String && fv.String() != "" {
			out = append(out, f.key, fv.String()[:min(f.max, fv.Len())])
		}
	}
	return out
}

func noRequest[Res any](fn func() (*Res, error)) func(*struct{}) (*Res, error) {
	return func(*struct{}) (*Res, error) { return fn() }
}

func noResult[Req any](fn func(*Req) error) func(*Req) (*empty, error) {
	return func(req *Req) (*empty, error) { return nil, fn(req) }
}
