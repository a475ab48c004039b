// Package metrics is vxbridge's optional Prometheus endpoint (off unless
// VXBRIDGE_METRICS_ADDR is set): requests and their latency per protocol
// method, addresses in use per pool, overlay peers and whether this host's
// entries for each are complete. Gauges are read at scrape time from the
// plugin's own state, so they never drift from it.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vxbridge/vxbridge/driver"
	"github.com/vxbridge/vxbridge/ipam"
)

// Sources are where the gauges come from.
type Sources struct {
	Pools func() ([]ipam.Pool, error)
	Peers func(context.Context) ([]driver.PeerStatus, error)
}

// Metrics holds the registry; Observe is the plugin server's hook,
// Programmed the overlay data path's.
type Metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	convergence prometheus.Histogram
	programming prometheus.Histogram
}

// New registers vxbridge's metrics.
func New(src Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vxbridge_requests_total", Help: "Requests served, by method and outcome (ok, error).",
		}, []string{"method", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vxbridge_request_duration_seconds", Help: "Time to answer a request, by method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9), // 0.5 ms … 33 s
		}, []string{"method"}),
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vxbridge_overlay_convergence_seconds",
			Help: "From a remote endpoint advertised in Consul by its host to its FDB and neighbour entries programmed " +
				"here. Measured across the two hosts' clocks: skew adds to it (a negative value counts as 0).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16), // 1 ms … 33 s
		}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vxbridge_overlay_programming_seconds",
			Help:    "From a remote endpoint delivered by this host's Consul watch to its entries programmed here (this host's clock).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 0.1 ms … 3.3 s
		}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.convergence, m.programming, collector{src})
	return m
}

// Programmed records one remote endpoint first programmed into this
// host's kernel (overlay.Observer): advertised by its host (zero:
// unknown, from a plugin that sent no time), given here by the watch.
func (m *Metrics) Programmed(advertised, given, programmed time.Time) {
	if !advertised.IsZero() {
		m.convergence.Observe(max(0, programmed.Sub(advertised).Seconds()))
	}
	m.programming.Observe(programmed.Sub(given).Seconds())
}

// Observe records one request; path is the protocol path
// ("/NetworkDriver.Join").
func (m *Metrics) Observe(path string, took time.Duration, err error) {
	method := strings.TrimPrefix(path, "/")
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.requests.WithLabelValues(method, outcome).Inc()
	m.latency.WithLabelValues(method).Observe(took.Seconds())
}

// Serve answers /metrics on addr until ctx ends; it returns the address
// it listens on.
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("serving metrics", "addr", l.Addr().String())
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	return l.Addr().String(), nil
}

var (
	inUseDesc    = prometheus.NewDesc("vxbridge_pool_addresses_in_use", "Addresses allocated in a pool (gateway included).", []string{"pool", "overlay"}, nil)
	peersDesc    = prometheus.NewDesc("vxbridge_overlay_peers", "Other live hosts of the cluster.", nil, nil)
	completeDesc = prometheus.NewDesc("vxbridge_overlay_peer_entries_complete", "1 when this host's FDB and neighbour entries for the peer's endpoints are complete.", []string{"host"}, nil)
)

// collector reads the gauges at scrape time.
type collector struct{ src Sources }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- inUseDesc
	ch <- peersDesc
	ch <- completeDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	if pools, err := c.src.Pools(); err == nil {
		for _, p := range pools {
			ch <- prometheus.MustNewConstMetric(inUseDesc, prometheus.GaugeValue, float64(len(p.Allocated)), p.ID(), p.Overlay)
		}
	} else {
		ch <- prometheus.NewInvalidMetric(inUseDesc, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	peers, err := c.src.Peers(ctx)
	switch {
	case errors.Is(err, driver.ErrNoCluster):
		return // no cluster: no peers to show
	case err != nil:
		ch <- prometheus.NewInvalidMetric(peersDesc, err)
		return
	}
	n := 0
	for _, p := range peers {
		if p.Self {
			continue
		}
		n++
		v := 0.0
		if p.Complete {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(completeDesc, prometheus.GaugeValue, v, p.Host)
	}
	ch <- prometheus.MustNewConstMetric(peersDesc, prometheus.GaugeValue, float64(n))
}
