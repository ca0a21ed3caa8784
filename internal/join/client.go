package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/podnet/podnet/internal/pki"
)

// Request asks a join endpoint for a node's credentials.
type Request struct {
	// URL is the endpoint's base URL, https://host:port.
	URL string
	// Token authenticates both sides.
	Token Token
	// NodeName is the name the certificate is issued for.
	NodeName string
	// Dial makes the connection (nil: a net.Dialer's); a caller that must
	// connect from another network namespace sets it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Credentials are what a node needs to be a client of the datastore, PEM.
type Credentials struct {
	CA, Cert, Key []byte
}

// Fetch obtains a client certificate for r.NodeName from the endpoint: it
// refuses an endpoint whose certificate chain does not hold the CA the
// token pins or is not a server certificate of that CA for the URL's host,
// retries while the endpoint answers 429 (until ctx ends), and fails on
// any other refusal.
func Fetch(ctx context.Context, r Request) (Credentials, error) {
	u, err := url.Parse(r.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return Credentials{}, fmt.Errorf("join: endpoint %q: want https://host:port", r.URL)
	}
	keyPEM, csrPEM, err := pki.NewCSR(r.NodeName)
	if err != nil {
		return Credentials{}, err
	}
	body, err := json.Marshal(request{Node: r.NodeName, CSR: string(csrPEM)})
	if err != nil {
		return Credentials{}, fmt.Errorf("join: %w", err)
	}
	tr := &http.Transport{
		DialContext:       r.Dial,
		TLSClientConfig:   pinnedTLS(r.Token.CAHash, u.Hostname()),
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	cli := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.JoinPath(Path).String(), bytes.NewReader(body))
		if err != nil {
			return Credentials{}, fmt.Errorf("join: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+r.Token.Secret)
		req.Header.Set("Content-Type", "application/json")
		resp, err := cli.Do(req)
		if err != nil {
			return Credentials{}, fmt.Errorf("join %s: %w", r.URL, err)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxRequest))
		resp.Body.Close()
		if err != nil {
			return Credentials{}, fmt.Errorf("join %s: %w", r.URL, err)
		}
		switch resp.StatusCode {
		case http.StatusOK:
			return credentials(b, keyPEM, r.Token.CAHash)
		case http.StatusTooManyRequests:
			if err := wait(ctx, resp.Header.Get("Retry-After")); err != nil {
				return Credentials{}, fmt.Errorf("join %s: endpoint busy: %w", r.URL, err)
			}
		case http.StatusUnauthorized:
			return Credentials{}, fmt.Errorf("join %s: the token was refused", r.URL)
		default:
			return Credentials{}, fmt.Errorf("join %s: %s: %s", r.URL, resp.Status, bytes.TrimSpace(b))
		}
	}
}

// pinnedTLS trusts a server whose chain holds the CA of hash, and whose
// leaf that CA signed for host.
func pinnedTLS(hash, host string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain is verified in VerifyConnection, against the pinned CA
		// instead of the system's roots.
		InsecureSkipVerify: true, //nolint:gosec
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("join: the endpoint sent no certificate")
			}
			pool := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				if c.IsCA && pki.CertHash(c) == hash {
					pool.AddCert(c)
				}
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if err != nil {
				return fmt.Errorf("join: the endpoint is not the cluster the token pins (%s): %w", hash, err)
			}
			return nil
		},
	}
}

// credentials checks a join response: the CA is the pinned one and the
// certificate its, for the key sent.
func credentials(body, keyPEM []byte, hash string) (Credentials, error) {
	var resp response
	if err := json.Unmarshal(body, &resp); err != nil {
		return Credentials{}, fmt.Errorf("join: response: %w", err)
	}
	ca, err := pki.ParseCert([]byte(resp.CA))
	if err != nil {
		return Credentials{}, fmt.Errorf("join: response CA: %w", err)
	}
	if pki.CertHash(ca) != hash {
		return Credentials{}, fmt.Errorf("join: the endpoint sent a CA other than the token's %s", hash)
	}
	if _, err := tls.X509KeyPair([]byte(resp.Cert), keyPEM); err != nil {
		return Credentials{}, fmt.Errorf("join: the certificate is not for this node's key: %w", err)
	}
	return Credentials{CA: []byte(resp.CA), Cert: []byte(resp.Cert), Key: keyPEM}, nil
}

// wait waits for a Retry-After of seconds (1 s when unparsable).
func wait(ctx context.Context, retryAfter string) error {
	s, err := strconv.Atoi(retryAfter)
	if err != nil || s <= 0 {
		s = 1
	}
	t := time.NewTimer(time.Duration(s) * time.Second)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Files are the paths of a node's datastore credentials.
type Files struct {
	CA, Cert, Key string
}

// FilesIn are the credential files under dir: ca.crt, client.crt,
// client.key.
func FilesIn(dir string) Files {
	return Files{CA: filepath.Join(dir, pki.CACertFile), Cert: filepath.Join(dir, pki.ClientCertFile), Key: filepath.Join(dir, pki.ClientKeyFile)}
}

// Write stores c in f's files (created with their directory, 0700; the
// key 0600), the certificate last: its presence means the set is complete.
func (c Credentials) Write(f Files) error {
	if err := os.MkdirAll(filepath.Dir(f.Key), 0o700); err != nil {
		return fmt.Errorf("join: %w", err)
	}
	for _, w := range []struct {
		path string
		b    []byte
		mode os.FileMode
	}{{f.CA, c.CA, 0o644}, {f.Key, c.Key, 0o600}, {f.Cert, c.Cert, 0o644}} {
		if err := pki.WriteFile(w.path, w.b, w.mode); err != nil {
			return fmt.Errorf("join: %w", err)
		}
	}
	return nil
}

// Current tells whether f holds credentials of the CA the token pins that
// stay valid for a while yet (pki.RenewBefore), so the node need not join
// again.
func (f Files) Current(t Token) bool {
	ca, err := pki.ReadCert(f.CA)
	if err != nil || pki.CertHash(ca) != t.CAHash {
		return false
	}
	cert, err := pki.ReadCert(f.Cert)
	if err != nil || (&pki.CA{Cert: ca}).Valid(cert) != nil {
		return false
	}
	_, err = tls.LoadX509KeyPair(f.Cert, f.Key)
	return err == nil
}
