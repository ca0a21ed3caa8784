package etcd

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/pki"
)

// TestNodeAuth enables etcd's authentication on a server that requires
// client certificates: a node's certificate then joins, reads and keeps
// its lease, but cannot write another node's record or claims, the cluster
// config, or outside the prefix; what it may write, its own claim of a
// live node's subnet and a record naming that subnet, is refused by the
// watch; a certificate whose CN is no user reads nothing.
func TestNodeAuth(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca.EnsureServer(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, pki.CACertFile)
	client := func(name string) Config {
		cert, key, err := ca.EnsureClient(filepath.Join(dir, name), name)
		if err != nil {
			t.Fatal(err)
		}
		return Config{CAFile: caFile, CertFile: cert, KeyFile: key, DialTimeout: 2 * time.Second}
	}
	ec := testEmbed(t, t.TempDir(), "https")
	ec.CertFile, ec.KeyFile, ec.ClientCAFile = srvCert, srvKey, caFile
	admin := client("n0")
	admin.Embed = ec
	a, err := Open(testCtx(t), admin)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	withConfig(t, a, v4Config)
	n0 := acquire(t, a, "n0", cluster.Node{}, time.Minute).Node()
	acquire(t, a, "old", cluster.Node{}, time.Minute) // a node that joined before auth
	for range 2 {                                     // idempotent
		if err := a.EnableNodeAuth(testCtx(t), "n0"); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.AuthorizeNode(testCtx(t), "n1"); err != nil {
		t.Fatal(err)
	}
	if err := a.AuthorizeNode(testCtx(t), "n0"); err == nil || !strings.Contains(err.Error(), "administrator") {
		t.Fatalf("the administrator authorized as a node: %v", err)
	}

	open := func(name string) *Store {
		c := client(name)
		c.Endpoints = []string{ec.ClientURL}
		s, err := Open(testCtx(t), c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	for _, name := range []string{"n1", "old"} {
		n := open(name)
		if _, _, err := n.EnsureClusterConfig(testCtx(t), v4Config); err != nil {
			t.Fatalf("%s reads the config: %v", name, err)
		}
		l := acquire(t, n, name, cluster.Node{}, time.Minute)
		if err := l.Update(testCtx(t), l.Node()); err != nil {
			t.Fatalf("%s updates its record: %v", name, err)
		}
		for key, what := range map[string]string{
			n.key(keyNodes + "n0"):                           "another node's record",
			n.key(keyNodes + "evil"):                         "a record for no node",
			n.claimKey("n0", n0.Subnet):                      "another node's claim",
			n.claimKey(name+"x", mustCIDR(t, "10.9.0.0/24")): "a claim of a node whose name extends its own",
			n.key(keyConfig):                                 "the cluster config",
			"/elsewhere":                                     "a key outside the prefix",
		} {
			if _, err := n.cli.Put(testCtx(t), key, `{"name":"evil","ip":"192.0.2.66","subnet":"0.0.0.0/1"}`); err == nil || !strings.Contains(err.Error(), rpctypes.ErrPermissionDenied.Error()) {
				t.Errorf("%s writes %s: %v", name, what, err)
			}
		}
		for _, key := range []string{n.key(keyNodes + "n0"), n.claimKey("n0", n0.Subnet)} {
			if _, err := n.cli.Delete(testCtx(t), key); err == nil {
				t.Errorf("%s deletes %s", name, key)
			}
		}
		// What it may write, its own claim of n0's subnet and a record
		// naming it, gives it nothing: n0's claim is older.
		forged := fmt.Sprintf(`{"name":%q,"ip":"192.0.2.66","subnet":%q}`, name, n0.Subnet)
		if _, err := n.cli.Txn(testCtx(t)).Then(
			clientv3.OpPut(n.claimKey(name, n0.Subnet), n0.Subnet.String(), clientv3.WithLease(l.ID())),
			clientv3.OpPut(n.key(keyNodes+name), forged, clientv3.WithLease(l.ID())),
		).Commit(); err != nil {
			t.Fatalf("%s writes its own keys: %v", name, err)
		}
		v, _, err := a.listView(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		routed := map[string]string{}
		for _, nd := range v.valid() {
			routed[nd.Name] = nd.Subnet.String()
		}
		if _, ok := routed[name]; ok || routed["n0"] != n0.Subnet.String() {
			t.Errorf("after %s claimed n0's subnet the watch hands out %v, want n0 with it and not %s", name, routed, name)
		}
		if err := l.Release(testCtx(t)); err != nil {
			t.Fatalf("%s leaves: %v", name, err)
		}
	}

	// A certificate of the CA whose CN is no etcd user.
	stranger := client("stranger")
	stranger.Endpoints = []string{ec.ClientURL}
	if s, err := Open(testCtx(t), stranger); err == nil {
		s.Close()
		t.Fatal("a certificate of no user reads the datastore")
	}
	if _, err := a.cli.Get(testCtx(t), "/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		t.Fatalf("the administrator reads: %v", err)
	}
}
