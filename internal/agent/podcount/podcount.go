// Package podcount is the agent's controller that counts the pods attached
// to the cluster network on this node — the attachments its host links (the
// pods' veths, and the ifbs of the shaped ones) carry the identity of — and
// exports the count as a metric and in
// /status.
package podcount

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/link"
)

// Period is how often the pods are counted.
const Period = 5 * time.Second

// Controller is the pod counting controller.
type Controller struct {
	env   controller.Env
	gauge prometheus.Gauge

	mu   sync.Mutex
	pods int
}

// New returns the controller and registers its metric.
func New(env controller.Env) *Controller {
	c := &Controller{env: env, gauge: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "podnet_node_pods", Help: "Pods attached to the cluster network on this node.",
	})}
	env.Metrics.MustRegister(c.gauge)
	return c
}

// Name implements controller.Controller.
func (c *Controller) Name() string { return "pod-count" }

// Run counts the pods every Period until ctx ends.
func (c *Controller) Run(ctx context.Context, h *controller.Health) error {
	hd, err := c.env.NetlinkHandle()
	if err != nil {
		return err
	}
	defer hd.Close()
	t := time.NewTicker(Period)
	defer t.Stop()
	for {
		links, err := link.HostLinks(hd, cniconf.NetworkName)
		if err != nil {
			return err
		}
		// A shaped pod owns an ifb beside its veth: count attachments.
		pods := map[attachment.ID]bool{}
		for _, l := range links {
			pods[l.Attachment] = true
		}
		c.mu.Lock()
		c.pods = len(pods)
		c.mu.Unlock()
		c.gauge.Set(float64(len(pods)))
		h.Ready()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// FillStatus implements controller.StatusFiller.
func (c *Controller) FillStatus(st *cluster.NodeStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st.Pods = c.pods
}
