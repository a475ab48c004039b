package plugin

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// short are the timeouts under test: small, so the test is quick, and
// apart, so each cut-off shows which one made it.
var short = timeouts{header: 200 * time.Millisecond, request: 400 * time.Millisecond, idle: 300 * time.Millisecond}

// cutOff reads from c until the server closes it and returns how long that
// took; it fails the test if the server keeps it open for 5 s.
func cutOff(t *testing.T, c net.Conn, start time.Time) time.Duration {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatalf("the server kept the connection open: %v", err)
	}
	return time.Since(start)
}

func dial(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

const call = "POST /NetworkDriver.Leave HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\n"

func TestStalledConnectionsAreCutOff(t *testing.T) {
	sock := listen(t, &fake{}, short)
	for _, tc := range []struct {
		what, send string
		within     time.Duration // the timeout that should act, plus slack
	}{
		{"nothing sent", "", short.header + time.Second},
		{"half the headers", "POST /NetworkDriver.Leave HTTP/1.1\r\nHost: pl", short.header + time.Second},
		{"half the body", call + "Content-Length: 100\r\n\r\n{\"Net", short.request + time.Second},
	} {
		t.Run(tc.what, func(t *testing.T) {
			start := time.Now()
			c := dial(t, sock)
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			if took := cutOff(t, c, start); took > tc.within {
				t.Fatalf("cut off after %v, want within %v", took, tc.within)
			}
		})
	}
}

func TestIdleConnectionIsCutOff(t *testing.T) {
	sock := listen(t, &fake{}, short)
	c := dial(t, sock)
	body := `{"NetworkID":"n","EndpointID":"e"}`
	io.WriteString(c, call+"Content-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	r := bufio.NewReader(c)
	res, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	answered := time.Now()
	if took := cutOff(t, c, answered); took > short.idle+time.Second {
		t.Fatalf("idle connection cut off after %v, want within %v", took, short.idle+time.Second)
	}
}

// A handler that takes longer than every timeout (waiting on a lock, say)
// still gets its answer through: only reading the request is bounded.
func TestSlowHandlerStillAnswers(t *testing.T) {
	f := &fake{}
	f.setFail(func(string) error { time.Sleep(2 * short.request); return nil })
	sock := listen(t, f, short)
	c := dial(t, sock)
	body := `{"NetworkID":"n","EndpointID":"e"}`
	io.WriteString(c, call+"Content-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer from a slow handler: %v", err)
	}
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != "{}" {
		t.Fatalf("slow handler answered %d %q", res.StatusCode, b)
	}
}
