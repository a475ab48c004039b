package plugin

import (
	"net"
	"net/http"
	"time"
)

// timeouts bound how long a connection may hold the plugin without
// progress: a client that connects and sends nothing, or sends slowly, or
// keeps an idle connection, is cut off.
type timeouts struct {
	header  time.Duration // to send the request's headers
	request time.Duration // to send the whole request, body included
	idle    time.Duration // between two requests on one connection
}

// defaultTimeouts: dockerd sends its small requests at once, so seconds
// are plenty to read one; it keeps connections for reuse, so idle ones get
// longer. Writing the answer is not bounded: a handler may wait a long
// while (behind a repair, on iptables), and cutting off an answer whose
// work is done would leave dockerd and the plugin disagreeing.
var defaultTimeouts = timeouts{header: 10 * time.Second, request: 30 * time.Second, idle: 2 * time.Minute}

// Serve answers h's calls on l until l is closed.
func Serve(l net.Listener, h http.Handler) error {
	return serve(l, h, defaultTimeouts)
}

func serve(l net.Listener, h http.Handler, t timeouts) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.header,
		ReadTimeout:       t.request,
		IdleTimeout:       t.idle,
		MaxHeaderBytes:    64 << 10, // dockerd's headers are a few hundred bytes
	}
	return srv.Serve(l)
}
