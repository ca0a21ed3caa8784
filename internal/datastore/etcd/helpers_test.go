package etcd

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/cluster"
)

// The tests share one embedded etcd server (started on first use); each
// test works under its own key prefix. Tests about the server itself
// (restart, TLS, ports) start their own.
var shared struct {
	once sync.Once
	dir  string
	s    *Store
	url  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.s != nil {
		shared.s.Close()
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// freePort is a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testEmbed is an EmbedConfig on free loopback ports in dir.
func testEmbed(t testing.TB, dir, scheme string) *EmbedConfig {
	return &EmbedConfig{
		Name:      "n0",
		DataDir:   dir,
		ClientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, freePort(t)),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// sharedURL is the client URL of the shared embedded server.
func sharedURL(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "podnet-datastore-test-")
		if shared.err != nil {
			return
		}
		ec := testEmbed(t, shared.dir, "http")
		shared.s, shared.err = Open(context.Background(), Config{Embed: ec})
		shared.url = ec.ClientURL
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.url
}

// newStore is a client Store of the shared server under a prefix of its
// own, closed when the test ends.
func newStore(t testing.TB) *Store {
	t.Helper()
	prefix := "/test/" + strings.ReplaceAll(t.Name(), "/", "_") + "/"
	s, err := Open(testCtx(t), Config{Endpoints: []string{sharedURL(t)}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// withConfig stores c in s.
func withConfig(t testing.TB, s *Store, c cluster.Config) {
	t.Helper()
	if _, _, err := s.EnsureClusterConfig(testCtx(t), c); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond every 20 ms until it holds or the test context ends.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	ctx := testCtx(t)
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func mustCIDR(t testing.TB, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func cidrString(n *net.IPNet) string {
	if n == nil {
		return ""
	}
	return n.String()
}
