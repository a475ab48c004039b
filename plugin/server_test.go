package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	netapi "github.com/docker/go-plugins-helpers/network"
	"github.com/docker/go-plugins-helpers/sdk"
)

// fake stands in for both the driver and the allocator: every call answers
// a zero value, unless fail decides otherwise (an error or a panic). last is
// the call that reached it, to check that a route calls the right method.
type fake struct {
	mu   sync.Mutex
	fail func(call string) error
	last string
}

func (f *fake) do(call string) error {
	f.mu.Lock()
	f.last = call
	fail := f.fail
	f.mu.Unlock()
	if fail == nil {
		return nil
	}
	return fail(call)
}

func (f *fake) setFail(fn func(call string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

// lastCall returns the call that reached the fake since the previous
// lastCall, or "".
func (f *fake) lastCall() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	last := f.last
	f.last = ""
	return last
}

type fakeNet struct{ *fake }

func (n fakeNet) GetCapabilities() (*netapi.CapabilitiesResponse, error) {
	return new(netapi.CapabilitiesResponse), n.do("NetworkDriver.GetCapabilities")
}
func (n fakeNet) CreateNetwork(*netapi.CreateNetworkRequest) error {
	return n.do("NetworkDriver.CreateNetwork")
}
func (n fakeNet) AllocateNetwork(*netapi.AllocateNetworkRequest) (*netapi.AllocateNetworkResponse, error) {
	return new(netapi.AllocateNetworkResponse), n.do("NetworkDriver.AllocateNetwork")
}
func (n fakeNet) DeleteNetwork(*netapi.DeleteNetworkRequest) error {
	return n.do("NetworkDriver.DeleteNetwork")
}
func (n fakeNet) FreeNetwork(*netapi.FreeNetworkRequest) error {
	return n.do("NetworkDriver.FreeNetwork")
}
func (n fakeNet) CreateEndpoint(*netapi.CreateEndpointRequest) (*netapi.CreateEndpointResponse, error) {
	return new(netapi.CreateEndpointResponse), n.do("NetworkDriver.CreateEndpoint")
}
func (n fakeNet) DeleteEndpoint(*netapi.DeleteEndpointRequest) error {
	return n.do("NetworkDriver.DeleteEndpoint")
}
func (n fakeNet) EndpointInfo(*netapi.InfoRequest) (*netapi.InfoResponse, error) {
	return new(netapi.InfoResponse), n.do("NetworkDriver.EndpointInfo")
}
func (n fakeNet) Join(*netapi.JoinRequest) (*netapi.JoinResponse, error) {
	return new(netapi.JoinResponse), n.do("NetworkDriver.Join")
}
func (n fakeNet) Leave(*netapi.LeaveRequest) error { return n.do("NetworkDriver.Leave") }
func (n fakeNet) DiscoverNew(*netapi.DiscoveryNotification) error {
	return n.do("NetworkDriver.DiscoverNew")
}
func (n fakeNet) DiscoverDelete(*netapi.DiscoveryNotification) error {
	return n.do("NetworkDriver.DiscoverDelete")
}
func (n fakeNet) ProgramExternalConnectivity(*netapi.ProgramExternalConnectivityRequest) error {
	return n.do("NetworkDriver.ProgramExternalConnectivity")
}
func (n fakeNet) RevokeExternalConnectivity(*netapi.RevokeExternalConnectivityRequest) error {
	return n.do("NetworkDriver.RevokeExternalConnectivity")
}

type fakeIpam struct{ *fake }

func (a fakeIpam) GetCapabilities() (*ipamapi.CapabilitiesResponse, error) {
	return new(ipamapi.CapabilitiesResponse), a.do("IpamDriver.GetCapabilities")
}
func (a fakeIpam) GetDefaultAddressSpaces() (*ipamapi.AddressSpacesResponse, error) {
	return new(ipamapi.AddressSpacesResponse), a.do("IpamDriver.GetDefaultAddressSpaces")
}
func (a fakeIpam) RequestPool(*ipamapi.RequestPoolRequest) (*ipamapi.RequestPoolResponse, error) {
	return new(ipamapi.RequestPoolResponse), a.do("IpamDriver.RequestPool")
}
func (a fakeIpam) ReleasePool(*ipamapi.ReleasePoolRequest) error {
	return a.do("IpamDriver.ReleasePool")
}
func (a fakeIpam) RequestAddress(*ipamapi.RequestAddressRequest) (*ipamapi.RequestAddressResponse, error) {
	return new(ipamapi.RequestAddressResponse), a.do("IpamDriver.RequestAddress")
}
func (a fakeIpam) ReleaseAddress(*ipamapi.ReleaseAddressRequest) error {
	return a.do("IpamDriver.ReleaseAddress")
}

// What the fake's functions for vxbridge's own routes answer.
var (
	fixedState  = map[string]int{"networks": 1, "pools": 2}
	fixedReport = map[string][]string{"removed": {"vxb-0123456789a"}}
)

const (
	stateJSON  = `{"networks":1,"pools":2}`
	reportJSON = `{"removed":["vxb-0123456789a"]}`
)

// routes lists every path NewHandler serves, with a well-formed body as
// dockerd sends it and the fake call it must reach ("" for none). Its order
// is part of FuzzRequests' corpus: seeds pick a route by index, so append
// only.
var routes = []struct{ path, body, call string }{
	{"/NetworkDriver.GetCapabilities", `null`, "NetworkDriver.GetCapabilities"},
	{"/NetworkDriver.CreateNetwork", `{"NetworkID":"0123456789abcdef","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"com.docker.network.bridge.name":"br-web"}},"IPv4Data":[{"AddressSpace":"vxlocal","Pool":"10.1.0.0/24","Gateway":"10.1.0.1/24","AuxAddresses":null}],"IPv6Data":[]}`, "NetworkDriver.CreateNetwork"},
	{"/NetworkDriver.AllocateNetwork", `{"NetworkID":"0123456789abcdef","Options":{"a":"b"},"IPv4Data":[{"Pool":"10.1.0.0/24"}]}`, "NetworkDriver.AllocateNetwork"},
	{"/NetworkDriver.DeleteNetwork", `{"NetworkID":"0123456789abcdef"}`, "NetworkDriver.DeleteNetwork"},
	{"/NetworkDriver.FreeNetwork", `{"NetworkID":"0123456789abcdef"}`, "NetworkDriver.FreeNetwork"},
	{"/NetworkDriver.CreateEndpoint", `{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210","Interface":{"Address":"10.1.0.2/24","AddressIPv6":"","MacAddress":""},"Options":{"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]}}`, "NetworkDriver.CreateEndpoint"},
	{"/NetworkDriver.DeleteEndpoint", `{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210"}`, "NetworkDriver.DeleteEndpoint"},
	{"/NetworkDriver.EndpointOperInfo", `{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210"}`, "NetworkDriver.EndpointInfo"},
	{"/NetworkDriver.Join", `{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210","SandboxKey":"/var/run/docker/netns/1","Options":{}}`, "NetworkDriver.Join"},
	{"/NetworkDriver.Leave", `{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210"}`, "NetworkDriver.Leave"},
	{"/NetworkDriver.DiscoverNew", `{"DiscoveryType":1,"DiscoveryData":{"Address":"10.0.0.1","self":true}}`, "NetworkDriver.DiscoverNew"},
	{"/NetworkDriver.DiscoverDelete", `{"DiscoveryType":1,"DiscoveryData":null}`, "NetworkDriver.DiscoverDelete"},
	{"/NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210","Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}]}}`, "NetworkDriver.ProgramExternalConnectivity"},
	{"/NetworkDriver.RevokeExternalConnectivity", `{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210"}`, "NetworkDriver.RevokeExternalConnectivity"},
	{"/IpamDriver.GetCapabilities", `null`, "IpamDriver.GetCapabilities"},
	{"/IpamDriver.GetDefaultAddressSpaces", `null`, "IpamDriver.GetDefaultAddressSpaces"},
	{"/IpamDriver.RequestPool", `{"AddressSpace":"vxlocal","Pool":"10.1.0.0/24","SubPool":"","Options":{},"V6":false}`, "IpamDriver.RequestPool"},
	{"/IpamDriver.ReleasePool", `{"PoolID":"vxlocal/10.1.0.0/24"}`, "IpamDriver.ReleasePool"},
	{"/IpamDriver.RequestAddress", `{"PoolID":"vxlocal/10.1.0.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}`, "IpamDriver.RequestAddress"},
	{"/IpamDriver.ReleaseAddress", `{"PoolID":"vxlocal/10.1.0.0/24","Address":"10.1.0.2"}`, "IpamDriver.ReleaseAddress"},
	{"/Plugin.Activate", ``, ""},
	{StatePath, `{}`, "State"},
	{ReconcilePath, ``, "Reconcile"},
}

// startServer serves NewHandler, wired to f, on a unix socket in a fresh
// temporary directory and returns a client that talks to it.
func startServer(tb testing.TB, f *fake) *http.Client {
	tb.Helper()
	return startServerWith(tb, f, slog.New(slog.DiscardHandler), nil)
}

// startServerWith is startServer with a logger and an observer.
func startServerWith(tb testing.TB, f *fake, log *slog.Logger, observe Observer) *http.Client {
	tb.Helper()
	sock := listenWith(tb, f, defaultTimeouts, log, observe)
	c := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	tb.Cleanup(c.CloseIdleConnections)
	return c
}

// listen serves NewHandler, wired to f, with the timeouts t on a unix
// socket in a fresh temporary directory, and returns the socket's path.
func listen(tb testing.TB, f *fake, t timeouts) string {
	tb.Helper()
	return listenWith(tb, f, t, slog.New(slog.DiscardHandler), nil)
}

func listenWith(tb testing.TB, f *fake, t timeouts, log *slog.Logger, observe Observer) string {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "vxbridge.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		tb.Fatal(err)
	}
	own := map[string]Own{
		StatePath:     func(json.RawMessage) (any, error) { return fixedState, f.do("State") },
		ReconcilePath: func(json.RawMessage) (any, error) { return fixedReport, f.do("Reconcile") },
	}
	h := NewHandler(fakeNet{f}, fakeIpam{f}, own, log, observe)
	done := make(chan error, 1)
	go func() { done <- serve(l, h, t) }()
	tb.Cleanup(func() {
		l.Close()
		<-done
	})
	return sock
}

// post sends one call as dockerd does and returns the status and body.
func post(c *http.Client, path string, body []byte) (int, []byte, error) {
	resp, err := c.Post("http://vxbridge"+path, sdk.DefaultContentTypeV1_1, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

func mustPost(t *testing.T, c *http.Client, path, body string) (int, []byte) {
	t.Helper()
	code, out, err := post(c, path, []byte(body))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !json.Valid(out) {
		t.Fatalf("%s: answer is not JSON: %q", path, out)
	}
	return code, out
}

// errAnswer returns the text of an error answer: a JSON object with the one
// key Err, as libnetwork reads it.
func errAnswer(t *testing.T, path string, out []byte) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("%s: error answer %q: %v", path, out, err)
	}
	msg, ok := m["Err"].(string)
	if !ok || len(m) != 1 {
		t.Fatalf("%s: error answer %q is not {\"Err\": text}", path, out)
	}
	return msg
}

func TestEveryRouteAnswers(t *testing.T) {
	f := &fake{}
	c := startServer(t, f)
	for _, r := range routes {
		code, out := mustPost(t, c, r.path, r.body)
		if code != http.StatusOK {
			t.Fatalf("%s: status %d, answer %s", r.path, code, out)
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("%s: answer %s is not a JSON object: %v", r.path, out, err)
		}
		if _, ok := m["Err"]; ok {
			t.Fatalf("%s: success carries an error: %s", r.path, out)
		}
		if got := f.lastCall(); got != r.call {
			t.Fatalf("%s: reached %q, want %q", r.path, got, r.call)
		}
	}
	for path, want := range map[string]string{StatePath: stateJSON, ReconcilePath: reportJSON} {
		if _, out := mustPost(t, c, path, ""); strings.TrimSpace(string(out)) != want {
			t.Fatalf("%s: %s, want %s", path, out, want)
		}
	}
}

func TestActivateNamesBothDrivers(t *testing.T) {
	c := startServer(t, &fake{})
	code, out := mustPost(t, c, "/Plugin.Activate", "")
	var m struct{ Implements []string }
	if err := json.Unmarshal(out, &m); err != nil || code != http.StatusOK {
		t.Fatalf("activate: %d %s: %v", code, out, err)
	}
	for _, want := range []string{"NetworkDriver", "IpamDriver"} {
		if !slices.Contains(m.Implements, want) {
			t.Fatalf("activate implements %v, missing %s", m.Implements, want)
		}
	}
}

func TestMalformedRequest(t *testing.T) {
	f := &fake{}
	c := startServer(t, f)
	for _, r := range []struct{ path, body string }{
		{"/NetworkDriver.CreateNetwork", "{"},
		{"/NetworkDriver.CreateNetwork", `{"NetworkID": 5}`},
		{"/NetworkDriver.CreateNetwork", "[]"},
		{"/NetworkDriver.Join", `{"Options": []}`},
		{"/NetworkDriver.DeleteNetwork", "{} {}"},
		{"/IpamDriver.RequestPool", `{"V6": "yes"}`},
		{"/IpamDriver.ReleaseAddress", `{"PoolID": 5}`},
		{"/IpamDriver.ReleaseAddress", "[]"},
		{"/IpamDriver.GetCapabilities", "{"},
	} {
		code, out := mustPost(t, c, r.path, r.body)
		if code != http.StatusInternalServerError {
			t.Fatalf("%s %q: status %d, answer %s", r.path, r.body, code, out)
		}
		if msg := errAnswer(t, r.path, out); !strings.HasPrefix(msg, "malformed request: ") {
			t.Fatalf("%s %q: error %q", r.path, r.body, msg)
		}
		if got := f.lastCall(); got != "" {
			t.Fatalf("%s %q: malformed request reached %s", r.path, r.body, got)
		}
	}
}

// dockerd retries a call the plugin did not answer with the body it has
// already read: an empty one. Such a call must fail naming that, and reach
// nothing.
func TestEmptyBodyForCallsWithArgumentsIsNamed(t *testing.T) {
	f := &fake{}
	c := startServer(t, f)
	for _, path := range []string{"/NetworkDriver.CreateEndpoint", "/NetworkDriver.Join", "/NetworkDriver.EndpointOperInfo", "/IpamDriver.RequestAddress"} {
		code, out := mustPost(t, c, path, "")
		if code != http.StatusInternalServerError {
			t.Fatalf("%s: status %d, answer %s", path, code, out)
		}
		if msg := errAnswer(t, path, out); !strings.Contains(msg, "empty body") {
			t.Fatalf("%s: error %q does not name the empty body", path, msg)
		}
		if got := f.lastCall(); got != "" {
			t.Fatalf("%s: empty request reached %s", path, got)
		}
	}
}

func TestEmptyBodyForCallsWithoutArguments(t *testing.T) {
	f := &fake{}
	c := startServer(t, f)
	for _, path := range []string{"/NetworkDriver.GetCapabilities", "/IpamDriver.GetCapabilities", "/IpamDriver.GetDefaultAddressSpaces", StatePath, ReconcilePath} {
		for _, body := range []string{"", "null", "{}"} {
			if code, out := mustPost(t, c, path, body); code != http.StatusOK {
				t.Fatalf("%s %q: status %d, answer %s", path, body, code, out)
			}
			if f.lastCall() == "" {
				t.Fatalf("%s %q: the fake was not called", path, body)
			}
		}
	}
}

func TestPanicBecomesErrorAnswer(t *testing.T) {
	f := &fake{}
	c := startServer(t, f)
	f.setFail(func(call string) error {
		if call == "NetworkDriver.Join" || call == "State" {
			panic("boom in " + call)
		}
		return nil
	})
	for _, path := range []string{"/NetworkDriver.Join", StatePath} {
		code, out := mustPost(t, c, path, `{}`)
		if code != http.StatusInternalServerError {
			t.Fatalf("%s: status %d, answer %s", path, code, out)
		}
		if msg := errAnswer(t, path, out); !strings.Contains(msg, "internal error") || !strings.Contains(msg, "boom") {
			t.Fatalf("%s: error %q", path, msg)
		}
		// The server survives: the next call, to another route, works.
		if code, out := mustPost(t, c, "/IpamDriver.RequestPool", `{"Pool":"10.1.0.0/24"}`); code != http.StatusOK {
			t.Fatalf("after a panic: status %d, answer %s", code, out)
		}
	}
	f.setFail(nil)
	if code, out := mustPost(t, c, "/NetworkDriver.Join", `{}`); code != http.StatusOK {
		t.Fatalf("join after the panics stopped: status %d, answer %s", code, out)
	}
}

func TestErrorAnswerCarriesText(t *testing.T) {
	f := &fake{}
	c := startServer(t, f)
	f.setFail(func(call string) error { return errors.New(call + ": network 0123456789ab not found") })
	for _, r := range routes {
		if r.call == "" {
			continue
		}
		code, out := mustPost(t, c, r.path, r.body)
		if code != http.StatusInternalServerError {
			t.Fatalf("%s: status %d, answer %s", r.path, code, out)
		}
		if msg, want := errAnswer(t, r.path, out), r.call+": network 0123456789ab not found"; msg != want {
			t.Fatalf("%s: error %q, want %q", r.path, msg, want)
		}
	}
}

// FuzzRequests sends arbitrary bodies to every route of one server that
// lives as long as the fuzz process. Whatever the body, the answer is JSON
// with status 200 or 500 over an intact connection; since the fake never
// fails, a 500 can only be a malformed request, never a panic.
func FuzzRequests(f *testing.F) {
	for i, r := range routes {
		f.Add(uint8(i), []byte(r.body))
	}
	fk := &fake{}
	c := startServer(f, fk)

	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		path := routes[int(route)%len(routes)].path
		code, out, err := post(c, path, body)
		if err != nil {
			t.Fatalf("%s %q: transport error: %v", path, body, err)
		}
		if !json.Valid(out) {
			t.Fatalf("%s %q: answer is not JSON: %q", path, body, out)
		}
		switch code {
		case http.StatusOK:
			var m map[string]any
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatalf("%s %q: answer %s is not an object", path, body, out)
			}
		case http.StatusInternalServerError:
			if msg := errAnswer(t, path, out); !strings.HasPrefix(msg, "malformed request: ") {
				t.Fatalf("%s %q: error %q", path, body, msg)
			}
		default:
			t.Fatalf("%s %q: status %d, answer %s", path, body, code, out)
		}
	})
}

// Every call is logged once at debug with what it names, and observed.
func TestCallLogAndObserver(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	var seen []string
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := startServerWith(t, &fake{}, log, func(path string, took time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, fmt.Sprintf("%s %v", path, err != nil))
	})
	mustPost(t, c, "/NetworkDriver.Join", `{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210","SandboxKey":"/x","Options":{}}`)
	mustPost(t, c, "/IpamDriver.ReleasePool", `{"PoolID":"vxlocal/10.1.0.0/24"}`)
	mustPost(t, c, "/NetworkDriver.Leave", `{`)
	mu.Lock()
	defer mu.Unlock()
	out := buf.String()
	for _, want := range []string{
		`msg=call network=0123456789ab endpoint=fedcba987654 call=/NetworkDriver.Join took=`,
		`msg=call pool=vxlocal/10.1.0.0/24 call=/IpamDriver.ReleasePool`,
		`msg="call failed" call=/NetworkDriver.Leave err="malformed request`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if want := []string{"/NetworkDriver.Join false", "/IpamDriver.ReleasePool false", "/NetworkDriver.Leave true"}; !slices.Equal(seen, want) {
		t.Errorf("observed %q, want %q", seen, want)
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
