// Package etcd is podnet's datastore in etcd (a datastore.Store): the
// cluster config every agent shares and the node records with their leased
// pod subnets.
//
// An agent either embeds a single-node etcd server (Config.Embed) or is a
// client of an external etcd cluster, or of another agent's embedded server
// (Config.Endpoints). Every key lives under one prefix (default "/podnet/"):
//
//	<prefix>config                       the cluster.Config, JSON, created once
//	<prefix>nodes/<name>                 a cluster.Node record, JSON, bound to the node's etcd lease
//	<prefix>claims/<name>/<cidr, / as _> the node's claim of that subnet (its CIDR), same lease
//
// A subnet belongs to its live claim of the lowest create revision, so a
// node writes only keys named after itself. The config is created in a
// transaction only if absent. See docs/agent-datastore.md.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/datastore"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// DefaultPrefix is the key prefix used when Config.Prefix is empty.
const DefaultPrefix = "/podnet/"

// DefaultDialTimeout is the dial timeout used when Config.DialTimeout is 0.
const DefaultDialTimeout = 5 * time.Second

// reconnectMax bounds the client's wait between reconnection attempts.
const reconnectMax = 2 * time.Second

// DefaultLeaseTTL is the lease TTL used when Config.LeaseTTL is 0.
const DefaultLeaseTTL = 60 * time.Second

// Config selects and reaches the datastore.
type Config struct {
	// Endpoints are the client URLs of an external etcd cluster or of
	// another agent's embedded server. Used when Embed is nil; exclusive
	// with Embed.
	Endpoints []string
	// Embed, when set, runs a single-node etcd server in this process and
	// the Store uses it through its ClientURL.
	Embed *EmbedConfig
	// CAFile verifies the server's certificate; CertFile and KeyFile are
	// this client's certificate (for servers that require client
	// certificates). Any of them set turns TLS on for the client
	// (endpoints then are https://).
	CAFile, CertFile, KeyFile string
	// Prefix is the key prefix, default DefaultPrefix; a missing trailing
	// "/" is added.
	Prefix string
	// DialTimeout bounds connecting and the first request, default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// Log receives the datastore's own messages (watch re-lists, lease
	// re-acquisitions). Nil discards them.
	Log *slog.Logger
	// LeaseTTL is the TTL of the leases Join takes: the grace period
	// before a dead node's record and subnets vanish. Default
	// DefaultLeaseTTL.
	LeaseTTL time.Duration
	// Metrics, when set, receives the lease keep-alive counters.
	Metrics prometheus.Registerer
	// EtcdLogLevel is the level of the etcd client's and embedded server's
	// own logs, written to stderr: debug, info, warn, error (default) or
	// fatal.
	EtcdLogLevel string
}

// Store is a connection to the datastore, and the embedded etcd server when
// Config.Embed asked for one.
type Store struct {
	cli    *clientv3.Client
	srv    io.Closer // embedded server, or nil
	prefix string
	ttl    time.Duration
	log    *slog.Logger

	renewals, reacquisitions, refusedRecords prometheus.Counter
}

var _ datastore.Store = (*Store)(nil)

// Open starts the embedded etcd server when cfg.Embed is set (waiting, at
// most until ctx ends, for it to be ready) and connects a client to it or to
// cfg.Endpoints. It fails when no endpoint answers within the dial timeout.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.EtcdLogLevel == "" {
		cfg.EtcdLogLevel = "error"
	}
	lvl, err := zapcore.ParseLevel(cfg.EtcdLogLevel)
	if err != nil {
		return nil, fmt.Errorf("datastore: etcd log level: %w", err)
	}
	zlog := newZapLogger(zap.NewAtomicLevelAt(lvl))
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	s := &Store{prefix: cfg.Prefix, ttl: cfg.LeaseTTL, log: cfg.Log,
		renewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_agent_lease_renewals_total", Help: "Keep-alives of the node's subnet lease.",
		}),
		reacquisitions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_agent_lease_reacquisitions_total", Help: "Times the lease was lost and the node's subnets taken again.",
		}),
		refusedRecords: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_agent_node_records_refused_total", Help: "Node records refused because their node does not hold their subnets' oldest claims.",
		}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{s.renewals, s.reacquisitions, s.refusedRecords} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("datastore: metrics: %w", err)
			}
		}
	}
	endpoints := cfg.Endpoints
	switch {
	case cfg.Embed != nil && len(cfg.Endpoints) > 0:
		return nil, errors.New("datastore: Endpoints and Embed are exclusive: an embedded server is reached through its ClientURL")
	case cfg.Embed != nil:
		// The server logs through its own level: Close silences the
		// errors etcd logs while it shuts down as planned.
		srvLevel := zap.NewAtomicLevelAt(lvl)
		srv, err := startEmbedded(ctx, *cfg.Embed, newZapLogger(srvLevel), srvLevel)
		if err != nil {
			return nil, err
		}
		s.srv = srv
		endpoints = []string{cfg.Embed.ClientURL}
	case len(endpoints) == 0:
		return nil, errors.New("datastore: no etcd endpoints and no embedded server configured")
	}
	ccfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: cfg.DialTimeout,
		Logger:      zlog,
		// Keepalive pings detect a dead server on an idle connection.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// Reconnect within seconds of etcd coming back, well inside any
		// lease TTL: gRPC's default backoff grows to two minutes, so after
		// an outage a lease could expire before its first renewal.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMax},
			MinConnectTimeout: 2 * time.Second,
		})},
	}
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		info := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		tc, err := info.ClientConfig()
		if err != nil {
			s.closeServer()
			return nil, fmt.Errorf("datastore: client TLS: %w", err)
		}
		ccfg.TLS = tc
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		s.closeServer()
		return nil, fmt.Errorf("datastore: etcd client for %v: %w", endpoints, err)
	}
	s.cli = cli
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(pctx, s.key(keyConfig), clientv3.WithCountOnly()); err != nil {
		s.Close()
		return nil, fmt.Errorf("datastore: etcd at %v not reachable within %v: %w", endpoints, cfg.DialTimeout, err)
	}
	return s, nil
}

// Close closes the client and stops the embedded server, if any.
func (s *Store) Close() error {
	var err error
	if s.cli != nil {
		err = s.cli.Close()
	}
	s.closeServer()
	return err
}

func (s *Store) closeServer() {
	if s.srv != nil {
		s.srv.Close()
		s.srv = nil
	}
}

// Join acquires a lease for self with the configured TTL (see Acquire).
func (s *Store) Join(ctx context.Context, self, prefer cluster.Node) (datastore.Membership, error) {
	return s.Acquire(ctx, self, prefer, s.ttl)
}

// Client is the etcd client, for uses this package does not cover.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Prefix is the key prefix every key of this Store lives under.
func (s *Store) Prefix() string { return s.prefix }

const (
	keyConfig = "config"
	keyNodes  = "nodes/"
	keyClaims = "claims/"
)

func (s *Store) key(k string) string { return s.prefix + k }

// newZapLogger writes etcd's own logs at lvl and above to stderr.
func newZapLogger(lvl zap.AtomicLevel) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(zapcore.AddSync(os.Stderr)), lvl)
	return zap.New(core).Named("etcd")
}
