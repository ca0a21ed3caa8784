package e2e

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/podnet/podnet/internal/join"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/pki"
)

// dialIn dials from the named namespace (a socket stays in the namespace
// it was made in).
func dialIn(nsName string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ns, err := netns.OpenNamed(nsName)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		var c net.Conn
		err = ns.Do(func() error {
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// etcdIn is an etcd client of endpoint whose connections are made in the
// named namespace, with tc for TLS (nil: plaintext).
func etcdIn(t *testing.T, nsName, endpoint string, tc *tls.Config) *clientv3.Client {
	t.Helper()
	dial := dialIn(nsName)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint}, TLS: tc, DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// opCtx bounds one datastore operation of a probe.
func opCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestDatastoreRefusesStrangers attacks the lab's datastore (embedded in
// n1's agent, secured by default) from a host on the underlay link (the
// router) and from a pod: without credentials nothing is read or written,
// plaintext is refused, a wrong join token is refused; with the right
// token the same place gets a certificate and can read — so the refusals
// are the datastore's, not the network's — but, as any joined node, write
// neither another node's record or claim nor the cluster config; its own
// claim of the embedding node's subnet, with a record naming it, is routed
// by nobody. The lab's second node joined with the token.
func TestDatastoreRefusesStrangers(t *testing.T) {
	l := newLab(t, lab.Spec{Nodes: 2, PodsPerNode: 1})
	e := l.Nodes[0]
	if !e.Embedded {
		t.Fatalf("%s does not embed the datastore", e.Name)
	}
	tokenFile := lab.JoinTokenFile(e)
	tok, err := join.ReadToken(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ReadCert(filepath.Join(e.Dir, "data", "pki", pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if pki.CertHash(ca) != tok.CAHash {
		t.Fatalf("the token pins %s, the CA is %s", tok.CAHash, pki.CertHash(ca))
	}
	joined, err := pki.ReadCert(filepath.Join(l.Nodes[1].Dir, "data", "pki", pki.ClientCertFile))
	if err != nil || joined.Subject.CommonName != l.Nodes[1].Name || joined.CheckSignatureFrom(ca) != nil {
		t.Fatalf("%s's client certificate: %v", l.Nodes[1].Name, err)
	}

	endpoint := net.JoinHostPort(e.IP, "2379")
	joinURL := "https://" + net.JoinHostPort(e.IP, "2378")
	roots := func() *tls.Config {
		p := (&pki.CA{Cert: ca}).Pool()
		return &tls.Config{RootCAs: p, ServerName: e.IP}
	}
	st, err := l.AgentStatus(ctxFor(t), e)
	if err != nil || st.Node.Subnet == nil {
		t.Fatalf("%s's status: %+v, %v", e.Name, st, err)
	}
	subnet := st.Node.Subnet.String()
	claimOf := func(node string) string {
		return "/podnet-lab/claims/" + node + "/" + strings.Replace(subnet, "/", "_", 1)
	}
	vantages := map[string]string{"pod": l.Pods[0].NS}
	for _, ns := range l.Namespaces {
		if strings.HasSuffix(ns, "-router") {
			vantages["host on the link"] = ns
		}
	}
	if len(vantages) != 2 {
		t.Fatalf("no router namespace among %v", l.Namespaces)
	}
	for name, ns := range vantages {
		t.Run(name, func(t *testing.T) {
			// TLS that trusts the cluster CA, without a client certificate:
			// the server ends the handshake (TLS 1.3: seen on reading).
			raw, err := dialIn(ns)(opCtx(t), "tcp", endpoint)
			if err != nil {
				t.Fatalf("the datastore is not reachable from here: %v", err)
			}
			conn := tls.Client(raw, roots())
			if err = conn.HandshakeContext(opCtx(t)); err == nil {
				_, err = conn.Read(make([]byte, 1))
			}
			conn.Close()
			if err == nil || !strings.Contains(err.Error(), "certificate required") {
				t.Errorf("TLS without a client certificate: %v, want the server's refusal", err)
			}
			anon := etcdIn(t, ns, "https://"+endpoint, roots())
			if r, err := anon.Get(opCtx(t), "/podnet-lab/", clientv3.WithPrefix()); err == nil {
				t.Errorf("read without a client certificate: %d keys", r.Count)
			}
			if _, err := anon.Put(opCtx(t), "/podnet-lab/nodes/evil", `{"name":"evil","ip":"10.100.1.200","subnet":"0.0.0.0/1"}`); err == nil {
				t.Error("write without a client certificate succeeded")
			}
			// Plaintext.
			if _, err := etcdIn(t, ns, "http://"+endpoint, nil).Get(opCtx(t), "/podnet-lab/config"); err == nil {
				t.Error("plaintext read succeeded")
			}
			// A wrong join token.
			wrong := tok
			wrong.Secret = strings.Repeat("00", 32)
			if _, err := join.Fetch(opCtx(t), join.Request{URL: joinURL, Token: wrong, NodeName: "evil", Dial: dialIn(ns)}); err == nil || !strings.Contains(err.Error(), "token was refused") {
				t.Errorf("join with a wrong token: %v", err)
			}
			// The right token: a certificate, and reads work from here.
			creds, err := join.Fetch(opCtx(t), join.Request{URL: joinURL, Token: tok, NodeName: "probe", Dial: dialIn(ns)})
			if err != nil {
				t.Fatalf("join with the token: %v", err)
			}
			cert, err := tls.X509KeyPair(creds.Cert, creds.Key)
			if err != nil {
				t.Fatal(err)
			}
			tc := roots()
			tc.Certificates = []tls.Certificate{cert}
			probe := etcdIn(t, ns, "https://"+endpoint, tc)
			if r, err := probe.Get(opCtx(t), "/podnet-lab/config"); err != nil || r.Count != 1 {
				t.Fatalf("read with the token's certificate: %v", err)
			}
			// Its etcd role lets it write its own record and claims only.
			for _, key := range []string{"/podnet-lab/nodes/" + e.Name, "/podnet-lab/config", "/podnet-lab/nodes/evil", claimOf(e.Name)} {
				if _, err := probe.Put(opCtx(t), key, `{"name":"evil","ip":"10.100.1.200","subnet":"0.0.0.0/1"}`); err == nil || !strings.Contains(err.Error(), "permission denied") {
					t.Errorf("a joined node writes %s: %v", key, err)
				}
			}
			if _, err := probe.Delete(opCtx(t), claimOf(e.Name)); err == nil || !strings.Contains(err.Error(), "permission denied") {
				t.Errorf("a joined node deletes %s's claim: %v", e.Name, err)
			}
			// Its own claim of a live node's subnet, and a record naming
			// it, are written but routed by nobody: the older claim owns it.
			if _, err := probe.Txn(opCtx(t)).Then(
				clientv3.OpPut(claimOf("probe"), subnet),
				clientv3.OpPut("/podnet-lab/nodes/probe", `{"name":"probe","ip":"10.100.1.200","subnet":"`+subnet+`"}`),
			).Commit(); err != nil {
				t.Errorf("a joined node writes its own claim and record: %v", err)
			}
		})
	}
	// No record was forged, the probe's is refused: every node still
	// routes only to the others.
	wantBackends(t, l, true, "")
	checkAll(t, l)
}
