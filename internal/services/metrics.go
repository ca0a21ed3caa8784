package services

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/internal/services/dataplane"
)

// metrics are the service proxy's Prometheus collectors.
type metrics struct {
	duration   prometheus.Histogram
	lastSync   prometheus.Gauge
	programmed *prometheus.GaugeVec
	written    prometheus.Counter
	flushed    prometheus.Counter
	errors     prometheus.Counter
	endpoints  *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podnet_services_sync_duration_seconds",
			Help:    "Time a sync of the service proxy took: the model of the changed Services and the nftables transaction.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_services_last_sync_timestamp_seconds", Help: "When the service proxy last synced the kernel successfully (Unix time).",
		}),
		programmed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podnet_services_programmed", Help: "What the service table holds after the last sync, by kind: services (ports per family), endpoints, chains, elements, rules.",
		}, []string{"kind"}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_services_objects_written_total", Help: "nftables objects (chains, rules, elements) added, changed or deleted by the service proxy's syncs.",
		}),
		flushed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_services_conntrack_flushed_total", Help: "Stale UDP conntrack entries of removed endpoints the service proxy deleted.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_services_sync_errors_total", Help: "Syncs of the service proxy that failed (retried).",
		}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podnet_services_endpoints", Help: "Distinct endpoint addresses this node sends a Service's traffic to (one series per proxied Service).",
		}, []string{"namespace", "name"}),
	}
	reg.MustRegister(m.duration, m.lastSync, m.programmed, m.written, m.flushed, m.errors, m.endpoints)
	return m
}

// synced records a successful sync.
func (m *metrics) synced(st dataplane.Stats, took time.Duration, at time.Time) {
	m.duration.Observe(took.Seconds())
	m.lastSync.Set(float64(at.UnixNano()) / 1e9)
	for kind, n := range map[string]int{
		"services": st.Services, "endpoints": st.Endpoints, "chains": st.Chains, "elements": st.Elements, "rules": st.Rules,
	} {
		m.programmed.WithLabelValues(kind).Set(float64(n))
	}
	m.written.Add(float64(st.Written))
	m.flushed.Add(float64(st.ConntrackFlushed))
}

// service sets the endpoint count of the Service key, or removes its
// series when it is not proxied.
func (m *metrics) service(key string, r Result, proxied bool) {
	ns, name := splitKey(key)
	if !proxied {
		m.endpoints.DeleteLabelValues(ns, name)
		return
	}
	m.endpoints.WithLabelValues(ns, name).Set(float64(r.Endpoints))
}
