package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"syscall"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// EmbedConfig is a single-node etcd server run inside the agent.
type EmbedConfig struct {
	// Name is the member name (the node name).
	Name string
	// DataDir holds the server's data on disk; created with mode 0700.
	DataDir string
	// ClientURL is where this agent and the other agents reach the server,
	// e.g. "http://10.0.0.1:2379" or "https://…" with CertFile/KeyFile: the
	// server listens on it and advertises it.
	ClientURL string
	// PeerURL is the raft peer URL (unused by a single node but required
	// by etcd), e.g. "https://127.0.0.1:2380": when https, the peer
	// listener serves CertFile and requires peer certificates signed by
	// ClientCAFile.
	PeerURL string
	// CertFile and KeyFile are the server's certificate for an https
	// ClientURL or PeerURL. ClientCAFile, when set, makes the server
	// require client certificates signed by that CA.
	CertFile, KeyFile, ClientCAFile string
}

// Tuning of the embedded server for a small store (a few hundred keys that
// change on node joins and leaves): see docs/agent-datastore.md.
const (
	embedSnapshotCount          = 5000
	embedSnapshotCatchUpEntries = 1000
	embedQuotaBackendBytes      = 256 << 20
	embedCompactionRetention    = "1000" // revisions kept
)

type embeddedServer struct {
	e   *embed.Etcd
	lvl zap.AtomicLevel // of the server's logger
}

// Close stops the server; the errors etcd logs about its listeners closing
// are expected then and not logged.
func (s embeddedServer) Close() error {
	s.lvl.SetLevel(zap.FatalLevel)
	s.e.Close()
	return nil
}

// startEmbedded starts the server and waits until it serves, ctx ends or
// it fails.
func startEmbedded(ctx context.Context, ec EmbedConfig, lg *zap.Logger, lvl zap.AtomicLevel) (embeddedServer, error) {
	if ec.Name == "" || ec.DataDir == "" || ec.ClientURL == "" || ec.PeerURL == "" {
		return embeddedServer{}, errors.New("datastore: embedded etcd needs Name, DataDir, ClientURL and PeerURL")
	}
	curl, err := parseURL("ClientURL", ec.ClientURL)
	if err != nil {
		return embeddedServer{}, err
	}
	purl, err := parseURL("PeerURL", ec.PeerURL)
	if err != nil {
		return embeddedServer{}, err
	}
	if (curl.Scheme == "https") != (ec.CertFile != "") {
		return embeddedServer{}, fmt.Errorf("datastore: embedded etcd: ClientURL %s needs CertFile/KeyFile exactly when it is https", ec.ClientURL)
	}
	if purl.Scheme == "https" && (ec.CertFile == "" || ec.ClientCAFile == "") {
		return embeddedServer{}, fmt.Errorf("datastore: embedded etcd: an https PeerURL (%s) needs CertFile/KeyFile and ClientCAFile", ec.PeerURL)
	}
	if err := os.MkdirAll(ec.DataDir, 0o700); err != nil {
		return embeddedServer{}, fmt.Errorf("datastore: embedded etcd data dir: %w", err)
	}
	if err := os.Chmod(ec.DataDir, 0o700); err != nil {
		return embeddedServer{}, fmt.Errorf("datastore: embedded etcd data dir: %w", err)
	}

	cfg := embed.NewConfig()
	cfg.Name = ec.Name
	cfg.Dir = ec.DataDir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(ec.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	cfg.ClientTLSInfo = transport.TLSInfo{
		CertFile:       ec.CertFile,
		KeyFile:        ec.KeyFile,
		TrustedCAFile:  ec.ClientCAFile,
		ClientCertAuth: ec.ClientCAFile != "",
	}
	if purl.Scheme == "https" {
		cfg.PeerTLSInfo = transport.TLSInfo{
			CertFile:       ec.CertFile,
			KeyFile:        ec.KeyFile,
			TrustedCAFile:  ec.ClientCAFile,
			ClientCertAuth: true,
		}
	}
	cfg.SnapshotCount = embedSnapshotCount
	cfg.SnapshotCatchUpEntries = embedSnapshotCatchUpEntries
	cfg.QuotaBackendBytes = embedQuotaBackendBytes
	cfg.AutoCompactionMode = embed.CompactorModeRevision
	cfg.AutoCompactionRetention = embedCompactionRetention
	cfg.EnablePprof = false
	cfg.EnableGRPCGateway = false
	cfg.ListenMetricsUrls = nil

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return embeddedServer{}, fmt.Errorf("datastore: embedded etcd: port in use (client %s, peer %s): %w", ec.ClientURL, ec.PeerURL, err)
		}
		return embeddedServer{}, fmt.Errorf("datastore: embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return embeddedServer{e, lvl}, nil
	case err := <-e.Err():
		lvl.SetLevel(zap.FatalLevel)
		e.Close()
		return embeddedServer{}, fmt.Errorf("datastore: embedded etcd failed while starting: %w", err)
	case <-ctx.Done():
		lvl.SetLevel(zap.FatalLevel)
		e.Close()
		return embeddedServer{}, fmt.Errorf("datastore: embedded etcd in %s not ready: %w", ec.DataDir, ctx.Err())
	}
}

func parseURL(what, s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("datastore: embedded etcd %s: %w", what, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Port() == "" {
		return nil, fmt.Errorf("datastore: embedded etcd %s %q: want http(s)://host:port", what, s)
	}
	return u, nil
}
