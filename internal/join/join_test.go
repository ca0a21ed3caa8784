package join

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/podnet/podnet/internal/pki"
)

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestParseToken(t *testing.T) {
	secret := strings.Repeat("ab", 32)
	hash := "sha256:" + strings.Repeat("0f", 32)
	for _, tc := range []struct {
		in      string
		want    Token
		wantErr string
	}{
		{"pn1:" + secret + "::" + hash, Token{secret, hash}, ""},
		{"  pn1:" + secret + "::" + strings.ToUpper(hash[:7]) + strings.ToUpper(hash[7:]) + "\n", Token{}, "sha256:"},
		{"pn1:" + secret + "::sha256:" + strings.Repeat("0F", 32) + "\n", Token{secret, hash}, ""},
		{"", Token{}, "not a podnet join token"},
		{"K10" + hash[7:] + "::server:" + secret, Token{}, "not a podnet join token"},
		{"pn1:" + secret, Token{}, "no CA hash"},
		{"pn1:" + secret[:63] + "::" + hash, Token{}, "secret"},
		{"pn1:" + strings.Repeat("zz", 32) + "::" + hash, Token{}, "secret"},
		{"pn1:" + secret + "::sha1:" + hash[7:], Token{}, "CA hash"},
		{"pn1:" + secret + "::" + hash + "00", Token{}, "CA hash"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseToken(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseToken = %+v, %v; want an error about %q", got, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("the error shows the secret: %v", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseToken = %+v, %v; want %+v", got, err, tc.want)
			}
			if again, err := ParseToken(got.String()); err != nil || again != got {
				t.Fatalf("round trip: %+v %v", again, err)
			}
		})
	}
}

func TestLoadOrCreateToken(t *testing.T) {
	ca := newCA(t)
	path := filepath.Join(t.TempDir(), "join-token")
	tok, err := LoadOrCreateToken(path, ca)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v, want mode 0600", fi.Mode(), err)
	}
	if tok.CAHash != ca.Hash() {
		t.Fatalf("token pins %s, CA is %s", tok.CAHash, ca.Hash())
	}
	if again, err := LoadOrCreateToken(path, ca); err != nil || again != tok {
		t.Fatalf("token not reused: %v", err)
	}
	if fromFile, err := ReadToken(path); err != nil || fromFile != tok {
		t.Fatalf("ReadToken: %+v %v", fromFile, err)
	}
	// Another CA (the data dir's CA was replaced): a new token.
	other := newCA(t)
	if renewed, err := LoadOrCreateToken(path, other); err != nil || renewed.CAHash != other.Hash() || renewed.Secret == tok.Secret {
		t.Fatalf("token for a new CA: %+v %v", renewed, err)
	}
}

// endpoint serves a join endpoint of a fresh CA on loopback and returns
// its CA, URL and token.
func endpoint(t *testing.T) (*pki.CA, string, Token) {
	ca, url, tok, _ := endpointServer(t)
	return ca, url, tok
}

// endpointServer is endpoint, with the Server.
func endpointServer(t *testing.T) (*pki.CA, string, Token, *Server) {
	t.Helper()
	ca := newCA(t)
	tok, err := NewToken(ca)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.EnsureServer(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := NewServer(ca, tok, nil, slog.New(slog.DiscardHandler))
	if err := s.Listen(addr, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return ca, "https://" + addr, tok, s
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestFetchWaitsWhenBusy gives the endpoint an empty request budget that
// refills slowly: Fetch gets 429, waits the Retry-After, tries again (a new
// connection each time) and joins.
func TestFetchWaitsWhenBusy(t *testing.T) {
	_, url, tok, s := endpointServer(t)
	s.limiter = rate.NewLimiter(rate.Every(1500*time.Millisecond), 1)
	s.limiter.Allow()
	var dials atomic.Int32
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	if _, err := Fetch(ctx(t), Request{URL: url, Token: tok, NodeName: "n1", Dial: dial}); err != nil {
		t.Fatal(err)
	}
	if n := dials.Load(); n < 2 {
		t.Fatalf("joined in %d attempt(s): Fetch did not get 429, or did not retry", n)
	}
}

func TestFetch(t *testing.T) {
	ca, url, tok := endpoint(t)
	otherCA := newCA(t)
	wrongSecret := tok
	wrongSecret.Secret = strings.Repeat("00", 32)
	wrongPin := tok
	wrongPin.CAHash = otherCA.Hash()
	for _, tc := range []struct {
		name, url, node string
		tok             Token
		wantErr         string
	}{
		{"right token", url, "n1", tok, ""},
		{"wrong secret", url, "n1", wrongSecret, "token was refused"},
		{"another cluster's CA pinned", url, "n1", wrongPin, "not the cluster the token pins"},
		{"host not in the server certificate", strings.Replace(url, "127.0.0.1", "localhost", 1), "n1", tok, "not the cluster the token pins"},
		{"bad node name", url, "n1/../x", tok, "400"},
		{"plain http", strings.Replace(url, "https", "http", 1), "n1", tok, "want https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Fetch(ctx(t), Request{URL: tc.url, Token: tc.tok, NodeName: tc.node})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Fetch = %v, want an error about %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cert, err := pki.ParseCert(c.Cert)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatal(err)
			}
			if cert.Subject.CommonName != tc.node || !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Fatalf("issued CN %q usages %v", cert.Subject.CommonName, cert.ExtKeyUsage)
			}

			files := FilesIn(filepath.Join(t.TempDir(), "pki"))
			if files.Current(tok) {
				t.Fatal("no files, yet current")
			}
			if err := c.Write(files); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(files.Key); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("key file: %v %v", fi.Mode(), err)
			}
			if !files.Current(tok) || files.Current(wrongPin) {
				t.Fatalf("Current: %v for the token, %v for another CA's", files.Current(tok), files.Current(wrongPin))
			}
		})
	}
}

// TestEndpointAnswers checks the endpoint's answers to raw requests: one
// answer for every wrong secret (no oracle), and a rate limit.
func TestEndpointAnswers(t *testing.T) {
	ca := newCA(t)
	tok, err := NewToken(ca)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ca, tok, func(_ context.Context, node string) error {
		if node == "admin" {
			return errors.New("an administrator")
		}
		return nil
	}, slog.New(slog.DiscardHandler))
	do := func(method, path, auth, body string) (int, string) {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	_, csr, err := pki.NewCSR("x")
	if err != nil {
		t.Fatal(err)
	}
	good := fmt.Sprintf(`{"node":"n1","csr":%q}`, csr)
	for _, tc := range []struct {
		name, method, path, auth, body string
		want                           int
	}{
		{"no secret", "POST", Path, "", good, 401},
		{"wrong secret", "POST", Path, "Bearer " + strings.Repeat("00", 32), good, 401},
		{"secret prefix", "POST", Path, "Bearer " + tok.Secret[:10], good, 401},
		{"secret without Bearer", "POST", Path, tok.Secret, good, 401},
		{"whole token as secret", "POST", Path, "Bearer " + tok.String(), good, 401},
		{"GET", "GET", Path, "Bearer " + tok.Secret, "", 405},
		{"other path", "POST", "/v1/other", "Bearer " + tok.Secret, good, 404},
		{"malformed body", "POST", Path, "Bearer " + tok.Secret, "{", 400},
		{"bad CSR", "POST", Path, "Bearer " + tok.Secret, `{"node":"n1","csr":"x"}`, 400},
		{"empty node name", "POST", Path, "Bearer " + tok.Secret, fmt.Sprintf(`{"node":"","csr":%q}`, csr), 400},
		{"etcd's administrator", "POST", Path, "Bearer " + tok.Secret, fmt.Sprintf(`{"node":"root","csr":%q}`, csr), 400},
		{"node name with a slash", "POST", Path, "Bearer " + tok.Secret, fmt.Sprintf(`{"node":"a/b","csr":%q}`, csr), 400},
		{"node the datastore refuses", "POST", Path, "Bearer " + tok.Secret, fmt.Sprintf(`{"node":"admin","csr":%q}`, csr), 403},
		{"right secret", "POST", Path, "Bearer " + tok.Secret, good, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(tc.method, tc.path, tc.auth, tc.body)
			if code != tc.want {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, code, body, tc.want)
			}
			if code == 401 && body != "unauthorized\n" {
				t.Fatalf("refusal tells more than unauthorized: %q", body)
			}
		})
	}
	limited := 0
	for range 2 * joinBurst {
		if code, _ := do("POST", Path, "Bearer wrong", good); code == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited == 0 {
		t.Fatalf("%d requests at once, none limited", 2*joinBurst)
	}
}
