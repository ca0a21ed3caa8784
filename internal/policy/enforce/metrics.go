package enforce

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/internal/policy"
	"github.com/podnet/podnet/internal/policy/dataplane"
)

// metrics are the network policy controller's Prometheus collectors.
type metrics struct {
	duration    prometheus.Histogram
	lastSync    prometheus.Gauge
	pods        *prometheus.GaugeVec
	programmed  *prometheus.GaugeVec
	written     prometheus.Counter
	errors      prometheus.Counter
	buildErrors prometheus.Gauge
	gateErrors  prometheus.Counter
}

// deniedDesc describes the denied packets, read from the table's
// counters at scrape.
var deniedDesc = prometheus.NewDesc("podnet_policy_denied_packets_total",
	"Packets the node's policy table dropped, by tier (admin, networkpolicy, baseline), policy (for networkpolicy the isolating policies, namespace/name joined with commas) and direction.",
	[]string{"tier", "policy", "direction"}, nil)

// deniedCollector reads the denied packets of the running table.
type deniedCollector func() ([]dataplane.Denied, error)

// Describe implements prometheus.Collector.
func (deniedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- deniedDesc }

// Collect implements prometheus.Collector: one counter per deny chain of
// the table, none while no table runs.
func (f deniedCollector) Collect(ch chan<- prometheus.Metric) {
	ds, err := f()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(deniedDesc, err)
		return
	}
	for _, d := range ds {
		ch <- prometheus.MustNewConstMetric(deniedDesc, prometheus.CounterValue, float64(d.Packets), d.Tier, d.Policy, d.Direction)
	}
}

func newMetrics(reg prometheus.Registerer, denied deniedCollector) *metrics {
	m := &metrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podnet_policy_sync_duration_seconds",
			Help:    "Time a sync of the network policy controller took: the node's model and the nftables transaction.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_policy_last_sync_timestamp_seconds", Help: "When the network policy controller last synced the kernel successfully (Unix time).",
		}),
		pods: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podnet_policy_pods", Help: "The node's pods after the last sync: policed (every local pod with an address), isolated_ingress, isolated_egress (selected by a NetworkPolicy for the direction).",
		}, []string{"state"}),
		programmed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podnet_policy_programmed", Help: "What the policy table holds after the last sync, by kind: chains, sets, elements, rules.",
		}, []string{"kind"}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_policy_objects_written_total", Help: "nftables objects (chains, sets, elements, rules) added, changed or deleted by the network policy controller's syncs.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_policy_sync_errors_total", Help: "Syncs of the network policy controller that failed (retried).",
		}),
		buildErrors: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_policy_build_errors", Help: "Invalid policies or policy parts in the last sync's model (skipped or matching nothing: the pods they select stay isolated); see the agent's log.",
		}),
		gateErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_policy_gate_errors_total", Help: "CNI ADDs the pod gate answered with an error (the pod's policy could not be confirmed in the kernel).",
		}),
	}
	reg.MustRegister(m.duration, m.lastSync, m.pods, m.programmed, m.written, m.errors, m.buildErrors, m.gateErrors, denied)
	return m
}

// built records the error of a Build: how many problems it joins.
func (m *metrics) built(err error) {
	n := 0
	if err != nil {
		n = 1
		var j interface{ Unwrap() []error }
		if errors.As(err, &j) {
			n = len(j.Unwrap())
		}
	}
	m.buildErrors.Set(float64(n))
}

// synced records a successful sync of model.
func (m *metrics) synced(model *policy.Model, st dataplane.Stats, took time.Duration, at time.Time) {
	m.duration.Observe(took.Seconds())
	m.lastSync.Set(float64(at.UnixNano()) / 1e9)
	var in, out int
	for _, p := range model.Pods {
		if p.Ingress.Isolated {
			in++
		}
		if p.Egress.Isolated {
			out++
		}
	}
	for state, n := range map[string]int{"policed": len(model.Pods), "isolated_ingress": in, "isolated_egress": out} {
		m.pods.WithLabelValues(state).Set(float64(n))
	}
	for kind, n := range map[string]int{"chains": st.Chains, "sets": st.Sets, "elements": st.Elements, "rules": st.Rules} {
		m.programmed.WithLabelValues(kind).Set(float64(n))
	}
	m.written.Add(float64(st.Written))
}
