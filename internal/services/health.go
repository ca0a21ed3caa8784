package services

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podnet/podnet/internal/coalesce"
	"github.com/podnet/podnet/internal/netns"
)

// The health servers kube-proxy runs, and cloud load balancers probe:
//
//   - the proxy's own (--service-proxy-health-addr, kube-proxy's
//     --healthz-bind-address): /healthz and /livez answer 200 while no
//     change has waited for a sync longer than the health timeout, 503
//     otherwise; /healthz also answers 503 while the node is being deleted
//     (so load balancers drain it first);
//   - one per LoadBalancer Service with externalTrafficPolicy Local, on
//     its healthCheckNodePort at the node-port addresses: GET answers 200
//     while the node has a ready endpoint of the Service, 503 otherwise,
//     with the count, so a load balancer sends only to nodes that serve.

// ToBeDeletedTaint is the taint the cluster autoscaler puts on a node it
// is removing: the proxy's /healthz fails on it.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// proxyHealth is the proxy's health: fed by the sync loop and the Node
// informer, read by the health servers.
type proxyHealth struct {
	q        *coalesce.Queue
	timeout  time.Duration
	lastSync atomic.Int64 // unix nanoseconds of the last successful sync
	eligible atomic.Bool  // the node is not being deleted
}

// healthy reports whether no change has waited longer than the timeout,
// and the last successful sync's time.
func (p *proxyHealth) healthy(now time.Time) (bool, time.Time) {
	var last time.Time
	if ns := p.lastSync.Load(); ns != 0 {
		last = time.Unix(0, ns)
	}
	return p.q.Pending(now) < p.timeout, last
}

// handler serves /healthz and /livez, with kube-proxy's JSON bodies.
func (p *proxyHealth) handler() http.Handler {
	mux := http.NewServeMux()
	serve := func(w http.ResponseWriter, withNode bool) {
		now := time.Now()
		ok, last := p.healthy(now)
		eligible := p.eligible.Load()
		if withNode {
			ok = ok && eligible
		}
		if ok {
			last = now
		}
		body := map[string]any{"lastUpdated": last.String(), "currentTime": now.String()}
		if withNode {
			body["nodeEligible"] = eligible
		}
		writeJSON(w, ok, body)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { serve(w, true) })
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { serve(w, false) })
	return mux
}

// writeJSON answers 200 (ok) or 503 with body as JSON.
func writeJSON(w http.ResponseWriter, ok bool, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if ok {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(body)
}

// listener opens TCP listeners in a network namespace (nil: the
// process's own); a socket stays in the namespace it was made in.
type listener struct{ ns *netns.NS }

func (l listener) listen(network, addr string) (net.Listener, error) {
	if l.ns == nil {
		return net.Listen(network, addr)
	}
	var ln net.Listener
	err := l.ns.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// server is an HTTP server on some listeners.
type server struct {
	srv *http.Server
	lns []net.Listener
}

// serve starts h on the listeners of addrs (host:port each); it listens
// on all of them or on none.
func (l listener) serve(h http.Handler, log *slog.Logger, addrs ...string) (*server, error) {
	s := &server{srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}
	for _, a := range addrs {
		network := "tcp4"
		if host, _, err := net.SplitHostPort(a); err == nil {
			if ip, err := netip.ParseAddr(host); err == nil && ip.Is6() {
				network = "tcp6"
			}
		}
		ln, err := l.listen(network, a)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("listen on %s: %w", a, err)
		}
		s.lns = append(s.lns, ln)
	}
	for _, ln := range s.lns {
		go func() {
			if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("health server", "addr", ln.Addr().String(), "err", err)
			}
		}()
	}
	return s, nil
}

// close stops the server and its listeners.
func (s *server) close() {
	_ = s.srv.Close()
	for _, ln := range s.lns {
		_ = ln.Close()
	}
}

// healthCheck is what a Service's health check answers.
type healthCheck struct {
	Port           uint16
	LocalEndpoints int
}

// healthChecks runs the health check servers of the Services that have
// one, each on its port at every node-port address.
type healthChecks struct {
	l      listener
	log    *slog.Logger
	health *proxyHealth
	// hosts are the node-port addresses the servers listen on.
	hosts func() ([]string, error)

	mu      sync.Mutex
	servers map[string]*serviceHealth // by Service key
}

// serviceHealth is one Service's health check server.
type serviceHealth struct {
	namespace, name string
	port            uint16
	local           atomic.Int64
	srv             *server
}

// serve answers a health check: 200 while the node has a ready endpoint
// of the Service and the proxy is healthy, with kube-proxy's body.
func (s *serviceHealth) serve(w http.ResponseWriter, p *proxyHealth) {
	n := s.local.Load()
	ok, _ := p.healthy(time.Now())
	type name struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	}
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.FormatInt(n, 10))
	writeJSON(w, n > 0 && ok, struct {
		Service             name `json:"service"`
		LocalEndpoints      int  `json:"localEndpoints"`
		ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
	}{name{s.namespace, s.name}, int(n), ok})
}

// sync makes the servers those of want (by Service key): new ones are
// opened, gone ones closed, the others' counts updated. A port that
// cannot be opened is reported and tried again at the next sync.
func (hc *healthChecks) sync(want map[string]healthCheck) error {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	for key, s := range hc.servers {
		if w, ok := want[key]; !ok || w.Port != s.port {
			s.srv.close()
			delete(hc.servers, key)
		}
	}
	var errs []error
	for key, w := range want {
		s := hc.servers[key]
		if s == nil {
			var err error
			if s, err = hc.open(key, w.Port); err != nil {
				errs = append(errs, err)
				continue
			}
			hc.servers[key] = s
		}
		s.local.Store(int64(w.LocalEndpoints))
	}
	return errors.Join(errs...)
}

// open starts the health check server of the Service key on port.
func (hc *healthChecks) open(key string, port uint16) (*serviceHealth, error) {
	hosts, err := hc.hosts()
	if err != nil {
		return nil, fmt.Errorf("health check of %s: %w", key, err)
	}
	ns, name := splitKey(key)
	s := &serviceHealth{namespace: ns, name: name, port: port}
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { s.serve(w, hc.health) })
	addrs := make([]string, len(hosts))
	for i, host := range hosts {
		addrs[i] = net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	if s.srv, err = hc.l.serve(h, hc.log, addrs...); err != nil {
		return nil, fmt.Errorf("health check of %s: %w", key, err)
	}
	hc.log.Info("health check node port opened", "service", key, "port", port)
	return s, nil
}

// closeAll stops every server.
func (hc *healthChecks) closeAll() {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	for key, s := range hc.servers {
		s.srv.close()
		delete(hc.servers, key)
	}
}
