package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the agent's Prometheus metrics, in a registry of its own.
type metrics struct {
	reg             *prometheus.Registry
	peers           prometheus.Gauge
	routes          *prometheus.GaugeVec
	reconcile       prometheus.Histogram
	reconcileErrors prometheus.Counter
	ready           prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_agent_peers", Help: "Other nodes this node is connected to.",
		}),
		routes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podnet_agent_peer_routes", Help: "Peers reached per backend (host-gw or vxlan).",
		}, []string{"backend"}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "podnet_agent_reconcile_seconds", Help: "Duration of a full reconcile of the node's network.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_agent_reconcile_errors_total", Help: "Reconciles that ended with an error.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_agent_ready", Help: "1 once the lease, the fabric and the CNI configuration are in place.",
		}),
	}
	m.reg.MustRegister(m.peers, m.routes, m.reconcile, m.reconcileErrors, m.ready,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// watchLease exports the lease's keep-alive counters.
func (m *metrics) watchLease(renewals, reacquisitions func() float64) {
	m.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "podnet_agent_lease_renewals_total", Help: "Keep-alives of the node's subnet lease.",
		}, renewals),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "podnet_agent_lease_reacquisitions_total", Help: "Times the lease was lost and the node's subnets taken again.",
		}, reacquisitions),
	)
}
