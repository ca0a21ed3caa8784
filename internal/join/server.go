package join

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/podnet/podnet/internal/pki"
)

// DefaultPort is the join endpoint's port when none is given.
const DefaultPort = 2378

// Path is the join endpoint's HTTP path.
const Path = "/v1/join"

// Requests the endpoint answers: a steady rate and a burst (a lab's nodes
// joining at once); beyond, 429 with Retry-After, whatever the token.
const (
	joinRate  = 20 // per second
	joinBurst = 50
)

// maxRequest bounds a request body (a certificate request is < 1 KiB).
const maxRequest = 16 << 10

// request is the body of a join request; the secret travels in the
// Authorization header ("Bearer <secret>").
type request struct {
	// Node is the joining node's name: the issued certificate's CN.
	Node string `json:"node"`
	// CSR is a PEM certificate request for the node's new key.
	CSR string `json:"csr"`
}

// response is the body of a successful join.
type response struct {
	// Cert is the node's client certificate, CA the cluster CA, PEM.
	Cert string `json:"cert"`
	CA   string `json:"ca"`
}

// Server is the join endpoint: it issues client certificates to nodes
// presenting the token's secret.
type Server struct {
	ca        *pki.CA
	token     Token
	authorize func(ctx context.Context, node string) error
	limiter   *rate.Limiter
	log       *slog.Logger
	srv       *http.Server
}

// NewServer is a join endpoint issuing certificates of ca to holders of
// token. authorize, when not nil, runs before a node's certificate is
// issued (it gives the node its datastore permissions) and refuses the
// node with an error. log receives one line per join and per refusal.
func NewServer(ca *pki.CA, token Token, authorize func(ctx context.Context, node string) error, log *slog.Logger) *Server {
	return &Server{ca: ca, token: token, authorize: authorize, limiter: rate.NewLimiter(joinRate, joinBurst), log: log}
}

// ServeHTTP answers POST Path: 401 without the right secret (the same
// answer for a missing, malformed or wrong one), 400 for a malformed
// request, 403 for a node authorize refuses, 429 beyond the request rate,
// else the node's certificate.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.limiter.Allow() {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many join requests", http.StatusTooManyRequests)
		return
	}
	if r.URL.Path != Path {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !s.token.secretMatches(secret) {
		s.log.Warn("join refused: wrong or missing token", "remote", r.RemoteAddr)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	var req request
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest)).Decode(&req); err != nil {
		http.Error(w, "malformed join request", http.StatusBadRequest)
		return
	}
	if err := ValidNodeName(req.Node); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cert, err := s.ca.SignClientCSR([]byte(req.CSR), req.Node)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if s.authorize != nil {
		if err := s.authorize(r.Context(), req.Node); err != nil {
			s.log.Warn("join refused: node not authorized", "joining", req.Node, "remote", r.RemoteAddr, "err", err)
			http.Error(w, "node "+req.Node+" cannot join", http.StatusForbidden)
			return
		}
	}
	s.log.Info("node joined: client certificate issued", "joining", req.Node, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(response{Cert: string(cert), CA: string(s.ca.PEM)})
}

// ValidNodeName tells why name cannot be a node's certificate name: 1 to
// 253 letters, digits, '.', '-' or '_', and not "root" (etcd's
// administrator when its authentication is on: a joining node never gets
// that identity).
func ValidNodeName(name string) error {
	if name == "" || len(name) > 253 || strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	}) >= 0 {
		return fmt.Errorf("node name %q: want 1 to 253 letters, digits, '.', '-' or '_'", name)
	}
	if name == "root" {
		return errors.New(`node name "root" is etcd's administrator`)
	}
	return nil
}

// Listen serves the endpoint over TLS on addr with the server certificate
// of certFile/keyFile, presented with the CA so that a joining node can
// check the CA against its token's pin. It returns once listening; Close
// stops it.
func (s *Server) Listen(addr, certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("join endpoint: %w", err)
	}
	cert.Certificate = append(cert.Certificate, s.ca.Cert.Raw)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("join endpoint: %w", err)
	}
	s.srv = &http.Server{
		Handler:           s,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	go func() {
		if err := s.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("join endpoint stopped", "err", err)
		}
	}()
	return nil
}

// Close stops the endpoint.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.srv.Shutdown(ctx)
}
