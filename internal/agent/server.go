package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/podnet/podnet/internal/cluster"
)

// status is what the agent has built, assembled from the shared state and
// every controller.
func (n *node) status() cluster.NodeStatus {
	st := cluster.NodeStatus{Cluster: n.env.Cluster}
	st.Node, _, _ = n.env.Self.Load()
	st.MTU, _, _ = n.env.PodMTU.Load()
	n.manager.FillStatus(&st)
	return st
}

// handler serves /healthz (the process answers), /readyz (200 while every
// controller is ready, else 503 with who is not and why), /status (what the
// agent built, as JSON) and /metrics.
func (n *node) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if why := n.manager.NotReady(); why != "" {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(n.status())
	})
	mux.Handle("/metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{}))
	return mux
}

// leftHandler serves what a node that left answers on the agent's
// address: /healthz and /readyz say ok (the leave is done), and nothing
// else is served.
func leftHandler() http.Handler {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok: left the cluster") }
	mux.HandleFunc("/healthz", ok)
	mux.HandleFunc("/readyz", ok)
	return mux
}

// ServeLeft serves, on the agent's Listen address until ctx ends, /readyz
// and /healthz answering that the node left: what `podnet-agent leave
// --wait` does once its leave succeeded, so that the uninstall's
// DaemonSet (deploy/podnet-cleanup.yaml, with the agent's readiness
// probe) is rolled out only when every node has left. Without a Listen
// address it only waits for ctx.
func (a *Agent) ServeLeft(ctx context.Context) error {
	if a.cfg.Listen == "" {
		<-ctx.Done()
		return nil
	}
	return a.serve(ctx, a.cfg.Listen, leftHandler())
}

// serve runs h on addr until ctx ends.
func (a *Agent) serve(ctx context.Context, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	a.log.Info("serving HTTP (health checks)", slog.String("addr", ln.Addr().String()))
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("health server: %w", err)
	}
	return nil
}
