package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/datastore"
	"github.com/podnet/podnet/internal/datastore/etcd"
	"github.com/podnet/podnet/internal/datastore/kubeapi"
	"github.com/podnet/podnet/internal/join"
	"github.com/podnet/podnet/internal/pki"
)

// Where the datastore's credentials live under the data dir.
const (
	pkiDir        = "pki"
	joinTokenFile = "join-token"
)

// Default ports of the embedded etcd server.
const (
	etcdClientPort = 2379
	etcdPeerPort   = 2380
)

// openStore opens the configured datastore: an embedded etcd server (its
// client URL on the node's underlay address by default) or an external
// etcd, secured as docs/agent-datastore.md tells, or the Kubernetes API
// (reached from the node's namespace). The datastore logs
// through the agent's logger.
func (a *Agent) openStore(ctx context.Context, ul controller.Underlay, reg prometheus.Registerer) (datastore.Store, error) {
	c := etcd.Config{
		Endpoints: a.cfg.EtcdEndpoints,
		CAFile:    a.cfg.EtcdCAFile,
		CertFile:  a.cfg.EtcdCertFile,
		KeyFile:   a.cfg.EtcdKeyFile,
		Prefix:    a.cfg.Prefix,
		LeaseTTL:  a.cfg.LeaseTTL,
		Log:       a.log.With("component", "datastore"),
		Metrics:   reg,
	}
	for _, u := range a.cfg.plaintextURLs() {
		a.log.Warn("INSECURE DATASTORE: plaintext and unauthenticated on a non-loopback address (--insecure-datastore): any host on the link and any pod can read and rewrite the cluster's state", "url", u)
	}
	var sec *embeddedPKI
	switch a.cfg.Datastore {
	case "embedded":
		client, peer := a.cfg.embeddedURLs(ul)
		c.Endpoints = nil
		c.Embed = &etcd.EmbedConfig{
			Name:      a.cfg.NodeName,
			DataDir:   filepath.Join(a.cfg.DataDir, "etcd"),
			ClientURL: client,
			PeerURL:   peer,
		}
		if isHTTPS(client) {
			var err error
			if sec, err = a.securePKI(&c, ul); err != nil {
				return nil, err
			}
		}
	case "etcd":
		if err := a.joinCredentials(ctx, &c); err != nil {
			return nil, err
		}
	case "kubernetes":
		return kubeapi.Open(ctx, kubeapi.Config{
			NodeName: a.cfg.NodeName, Kubeconfig: a.cfg.Kubeconfig, Cluster: a.cfg.Cluster,
			Grace: a.cfg.LeaseTTL, NetNS: a.cfg.NetNS, Log: c.Log, Metrics: reg,
		})
	default:
		return nil, errors.New("unknown datastore " + a.cfg.Datastore)
	}
	s, err := etcd.Open(ctx, c)
	if err != nil {
		return nil, err
	}
	if sec == nil {
		return s, nil
	}
	joinSrv, err := a.serveJoin(ctx, s, sec, ul)
	if err != nil {
		s.Close()
		return nil, err
	}
	return storeWithJoin{s, joinSrv}, nil
}

// storeWithJoin is the embedded datastore with its join endpoint, closed
// together.
type storeWithJoin struct {
	*etcd.Store
	join *join.Server
}

// Close stops the join endpoint, then the datastore.
func (s storeWithJoin) Close() error {
	return errors.Join(s.join.Close(), s.Store.Close())
}

// embeddedURLs are the embedded server's client and peer URLs: by default
// https on the node's underlay address, and the peer URL on loopback with
// the client URL's scheme (a plaintext client URL, allowed on loopback or
// when insecure, has no PKI to serve the peer with).
func (c *Config) embeddedURLs(ul controller.Underlay) (client, peer string) {
	client, peer = c.EtcdClientURL, c.EtcdPeerURL
	if client == "" {
		client = "https://" + net.JoinHostPort(ul.IP.String(), strconv.Itoa(etcdClientPort))
	}
	if peer == "" {
		scheme := "http"
		if isHTTPS(client) {
			scheme = "https"
		}
		peer = scheme + "://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(etcdPeerPort))
	}
	return client, peer
}

// embeddedPKI is what the embedding agent secures its datastore with.
type embeddedPKI struct {
	ca              *pki.CA
	token           join.Token
	tokenPath       string
	srvCert, srvKey string
}

// securePKI makes (on first start) or reuses the cluster CA, the embedded
// server's certificate, this agent's client certificate and the join
// token under the data dir, and sets them in c.
func (a *Agent) securePKI(c *etcd.Config, ul controller.Underlay) (*embeddedPKI, error) {
	dir := filepath.Join(a.cfg.DataDir, pkiDir)
	ca, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		return nil, fmt.Errorf("datastore CA: %w", err)
	}
	hosts := []string{"127.0.0.1", "::1", "localhost", ul.IP.String()}
	if ul.IP6 != nil {
		hosts = append(hosts, ul.IP6.String())
	}
	for _, u := range []string{c.Embed.ClientURL, c.Embed.PeerURL} {
		if pu, err := url.Parse(u); err == nil {
			hosts = append(hosts, pu.Hostname())
		}
	}
	srvCert, srvKey, err := ca.EnsureServer(dir, hosts)
	if err != nil {
		return nil, fmt.Errorf("datastore server certificate: %w", err)
	}
	cliCert, cliKey, err := ca.EnsureClient(dir, a.cfg.NodeName)
	if err != nil {
		return nil, fmt.Errorf("datastore client certificate: %w", err)
	}
	caFile := filepath.Join(dir, pki.CACertFile)
	c.Embed.CertFile, c.Embed.KeyFile, c.Embed.ClientCAFile = srvCert, srvKey, caFile
	c.CAFile, c.CertFile, c.KeyFile = caFile, cliCert, cliKey

	tokenPath := filepath.Join(a.cfg.DataDir, joinTokenFile)
	tok, err := join.LoadOrCreateToken(tokenPath, ca)
	if err != nil {
		return nil, err
	}
	return &embeddedPKI{ca: ca, token: tok, tokenPath: tokenPath, srvCert: srvCert, srvKey: srvKey}, nil
}

// serveJoin turns on etcd's authentication (this agent administers, every
// node gets a role confined to its own keys) and starts the join
// endpoint, which gives each joining node its role.
func (a *Agent) serveJoin(ctx context.Context, s *etcd.Store, sec *embeddedPKI, ul controller.Underlay) (*join.Server, error) {
	if err := s.EnableNodeAuth(ctx, a.cfg.NodeName); err != nil {
		return nil, err
	}
	listen := a.cfg.JoinListen
	if listen == "" {
		listen = net.JoinHostPort(ul.IP.String(), strconv.Itoa(join.DefaultPort))
	}
	srv := join.NewServer(sec.ca, sec.token, s.AuthorizeNode, a.log.With("component", "join"))
	if err := srv.Listen(listen, sec.srvCert, sec.srvKey); err != nil {
		return nil, err
	}
	a.log.Info("datastore secured: mutual TLS, etcd roles per node; other nodes join with the token in the file", "token", sec.tokenPath, "join", "https://"+listen, "ca", sec.ca.Hash())
	return srv, nil
}

// joinCredentials gives a client of an external datastore its
// credentials from the join token, when one is configured: those of an
// earlier join if still good, else new ones from the join endpoint.
func (a *Agent) joinCredentials(ctx context.Context, c *etcd.Config) error {
	tok, ok, err := a.cfg.joinToken()
	if err != nil || !ok {
		return err
	}
	files := join.FilesIn(filepath.Join(a.cfg.DataDir, pkiDir))
	if !files.Current(tok) {
		u := a.cfg.JoinURL
		if u == "" {
			first, err := url.Parse(c.Endpoints[0])
			if err != nil {
				return fmt.Errorf("etcd endpoint %q: %w", c.Endpoints[0], err)
			}
			u = "https://" + net.JoinHostPort(first.Hostname(), strconv.Itoa(join.DefaultPort))
		}
		creds, err := join.Fetch(ctx, join.Request{URL: u, Token: tok, NodeName: a.cfg.NodeName})
		if err != nil {
			return err
		}
		if err := creds.Write(files); err != nil {
			return err
		}
		a.log.Info("joined the cluster: datastore client certificate obtained", "join", u, "ca", tok.CAHash)
	}
	c.CAFile, c.CertFile, c.KeyFile = files.CA, files.Cert, files.Key
	return nil
}

// joinToken is the configured join token, if any.
func (c *Config) joinToken() (join.Token, bool, error) {
	switch {
	case c.JoinToken != "":
		t, err := join.ParseToken(c.JoinToken)
		return t, true, err
	case c.JoinTokenFile != "":
		t, err := join.ReadToken(c.JoinTokenFile)
		return t, true, err
	}
	return join.Token{}, false, nil
}

// validateDatastoreSecurity reports a datastore configuration that would
// be reached in plaintext over the network without --insecure-datastore,
// or join settings that contradict each other.
func (c *Config) validateDatastoreSecurity() []error {
	var errs []error
	if !c.InsecureDatastore {
		for _, u := range c.plaintextURLs() {
			errs = append(errs, fmt.Errorf("datastore URL %s is plaintext (http) on a non-loopback address: anyone on the network could read and rewrite the cluster's state; use https (the default) or, knowingly, --insecure-datastore", u))
		}
	}
	hasToken := c.JoinToken != "" || c.JoinTokenFile != ""
	switch {
	case c.JoinToken != "" && c.JoinTokenFile != "":
		errs = append(errs, errors.New("--join-token and --join-token-file are exclusive"))
	case hasToken && c.Datastore != "etcd":
		errs = append(errs, errors.New("a join token is for a client of another agent's datastore (--datastore=etcd)"))
	case hasToken && (c.EtcdCertFile != "" || c.EtcdKeyFile != ""):
		errs = append(errs, errors.New("--join-token and --etcd-certfile/--etcd-keyfile are exclusive: the token obtains the certificate"))
	case c.JoinToken != "":
		if _, err := join.ParseToken(c.JoinToken); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// plaintextURLs are the configured datastore URLs that are plaintext — http
// or without a scheme (etcd's client then speaks plaintext unless given
// TLS files) — on a non-loopback address.
func (c *Config) plaintextURLs() []string {
	urls := c.EtcdEndpoints
	tlsFiles := c.EtcdCAFile != "" || c.EtcdCertFile != "" || c.EtcdKeyFile != "" || c.JoinToken != "" || c.JoinTokenFile != ""
	if c.Datastore == "embedded" {
		urls, tlsFiles = []string{c.EtcdClientURL, c.EtcdPeerURL}, false
	}
	var plain []string
	for _, s := range urls {
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			u, err = url.Parse("//" + s)
		}
		if err != nil || u.Scheme == "https" || u.Scheme == "unix" || u.Scheme == "unixs" || s == "" || u.Scheme == "" && tlsFiles {
			continue
		}
		if h := u.Hostname(); h != "localhost" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
				plain = append(plain, s)
			}
		}
	}
	return plain
}

func isHTTPS(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme == "https"
}
