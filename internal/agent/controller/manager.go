package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/podnet/podnet/internal/cluster"
)

// Restart backoff of a failed controller: doubling from minBackoff up to
// maxBackoff, back to minBackoff once a run lasted stableRun.
const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
	stableRun  = time.Minute
)

// Health is one controller's readiness, as it reports it.
type Health struct {
	mu       sync.Mutex
	ready    bool
	reason   string
	restarts int
	onChange func()
}

// Ready reports the controller ready.
func (h *Health) Ready() { h.set(true, "") }

// NotReady reports the controller not ready, and why.
func (h *Health) NotReady(format string, a ...any) { h.set(false, fmt.Sprintf(format, a...)) }

func (h *Health) set(ready bool, reason string) {
	h.mu.Lock()
	changed := h.ready != ready || h.reason != reason
	h.ready, h.reason = ready, reason
	h.mu.Unlock()
	if changed && h.onChange != nil {
		h.onChange()
	}
}

// State is the readiness last reported and why not.
func (h *Health) State() (ready bool, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ready, h.reason
}

// Manager runs controllers. A controller whose Run fails (or panics) is
// logged, counted, reported not ready and restarted after a backoff, while
// the others go on: the node's kernel state keeps pods working, and one
// failing feature (say, the egress rules) must not take the routes down
// with it. Run returns when its context ends, only after every controller
// has returned, so what they share (the datastore, netlink handles) is
// closed after the last user is gone.
type Manager struct {
	log     *slog.Logger
	entries []*entry

	ready    prometheus.Gauge
	ctlReady *prometheus.GaugeVec
	restarts *prometheus.CounterVec
}

type entry struct {
	c Controller
	h *Health
}

// NewManager returns a manager that logs to log and registers its metrics
// (readiness, per-controller readiness and restarts) with reg.
func NewManager(log *slog.Logger, reg prometheus.Registerer) *Manager {
	m := &Manager{
		log: log,
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_agent_ready", Help: "1 while every controller of the agent is ready.",
		}),
		ctlReady: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podnet_agent_controller_ready", Help: "1 while the controller is ready.",
		}, []string{"controller"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podnet_agent_controller_restarts_total", Help: "Times the controller failed and was restarted.",
		}, []string{"controller"}),
	}
	reg.MustRegister(m.ready, m.ctlReady, m.restarts)
	return m
}

// Add adds a controller; call it before Run.
func (m *Manager) Add(c Controller) {
	e := &entry{c: c, h: &Health{reason: "starting"}}
	e.h.onChange = m.updateGauges
	m.entries = append(m.entries, e)
	m.ctlReady.WithLabelValues(c.Name()).Set(0)
	m.restarts.WithLabelValues(c.Name())
}

// Controllers are the controllers added, in order.
func (m *Manager) Controllers() []Controller {
	out := make([]Controller, len(m.entries))
	for i, e := range m.entries {
		out[i] = e.c
	}
	return out
}

// Run runs every controller until ctx ends and all of them returned.
func (m *Manager) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, e := range m.entries {
		g.Go(func() error {
			m.supervise(ctx, e)
			return nil
		})
	}
	return g.Wait()
}

// supervise runs one controller, restarting it with backoff when it fails.
func (m *Manager) supervise(ctx context.Context, e *entry) {
	log := m.log.With("controller", e.c.Name())
	backoff := minBackoff
	for {
		start := time.Now()
		err := runSafely(ctx, e)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			log.Debug("controller finished")
			return
		}
		if time.Since(start) >= stableRun {
			backoff = minBackoff
		}
		e.h.mu.Lock()
		e.h.restarts++
		e.h.mu.Unlock()
		m.restarts.WithLabelValues(e.c.Name()).Inc()
		e.h.NotReady("failed, restarting in %s: %v", backoff, err)
		log.Error("controller failed; restarting", "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// runSafely runs the controller, turning a panic into an error.
func runSafely(ctx context.Context, e *entry) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return e.c.Run(ctx, e.h)
}

// NotReady says why the agent is not ready — one "controller: reason" per
// controller that is not — or "" when every controller is ready.
func (m *Manager) NotReady() string {
	var why []string
	for _, e := range m.entries {
		if ok, reason := e.h.State(); !ok {
			why = append(why, e.c.Name()+": "+reason)
		}
	}
	return strings.Join(why, "; ")
}

// Statuses is every controller's readiness and restart count, by name.
func (m *Manager) Statuses() []cluster.ControllerStatus {
	out := make([]cluster.ControllerStatus, 0, len(m.entries))
	for _, e := range m.entries {
		e.h.mu.Lock()
		out = append(out, cluster.ControllerStatus{Name: e.c.Name(), Ready: e.h.ready, Reason: e.h.reason, Restarts: e.h.restarts})
		e.h.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// FillStatus fills st from every controller that reports status, and the
// readiness of all of them.
func (m *Manager) FillStatus(st *cluster.NodeStatus) {
	for _, e := range m.entries {
		if f, ok := e.c.(StatusFiller); ok {
			f.FillStatus(st)
		}
	}
	st.Controllers = m.Statuses()
	st.Ready = m.NotReady() == ""
}

// Cleanup runs Cleanup of every controller that has one, in order, and
// returns their errors joined.
func (m *Manager) Cleanup(ctx context.Context) error {
	var errs []error
	for _, e := range m.entries {
		if c, ok := e.c.(Cleaner); ok {
			if err := c.Cleanup(ctx); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", e.c.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) updateGauges() {
	all := 1.0
	for _, e := range m.entries {
		v := 0.0
		if ok, _ := e.h.State(); ok {
			v = 1
		} else {
			all = 0
		}
		m.ctlReady.WithLabelValues(e.c.Name()).Set(v)
	}
	m.ready.Set(all)
}
