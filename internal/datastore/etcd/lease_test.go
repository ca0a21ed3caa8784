package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podnet/podnet/internal/cluster"
)

const testTTL = 10 * time.Second

var v4Config = cluster.Config{ClusterCIDR: "10.244.0.0/16"}

func acquire(t testing.TB, s *Store, name string, prefer cluster.Node, ttl time.Duration) *Lease {
	t.Helper()
	l, err := s.Acquire(testCtx(t), cluster.Node{Name: name, IP: net.ParseIP("192.0.2.1")}, prefer, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// subnetOwners maps each claimed subnet of s (its key name) to the node
// holding it, and counts the claim keys.
func subnetOwners(t testing.TB, s *Store) (map[string]string, int) {
	t.Helper()
	resp, err := s.Client().Get(testCtx(t), s.key(keyClaims), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	cs := claims{}
	for _, kv := range resp.Kvs {
		if !cs.put(s, kv) {
			t.Fatalf("%s is no claim key", kv.Key)
		}
	}
	m := map[string]string{}
	for sn := range cs {
		m[sn] = cs.owner(sn)
	}
	return m, len(resp.Kvs)
}

func TestAcquireConcurrentDistinct(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, v4Config)
	const n = 50
	leases := make([]*Lease, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			l, err := s.Acquire(testCtx(t), cluster.Node{Name: fmt.Sprintf("node-%02d", i)}, cluster.Node{}, testTTL)
			if err != nil {
				t.Error(err)
				return
			}
			leases[i] = l
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	seen := map[string]string{}
	for _, l := range leases {
		n := l.Node()
		if n.Subnet == nil {
			t.Fatalf("%s got no subnet", n.Name)
		}
		if other, dup := seen[n.Subnet.String()]; dup {
			t.Fatalf("%s and %s both hold %s", other, n.Name, n.Subnet)
		}
		seen[n.Subnet.String()] = n.Name
		if !mustCIDR(t, "10.244.0.0/16").Contains(n.Subnet.IP) || n.Subnet.Mask.String() != "ffffff00" {
			t.Fatalf("%s got %s, not a /24 of the cluster CIDR", n.Name, n.Subnet)
		}
	}
	// The first free subnets in order: 10.244.0.0/24 … 10.244.49.0/24.
	for i := range n {
		if _, ok := seen[fmt.Sprintf("10.244.%d.0/24", i)]; !ok {
			t.Fatalf("10.244.%d.0/24 not leased: leases are not the first free ones", i)
		}
	}
	// Every race loser withdrew its claim.
	owners, keys := subnetOwners(t, s)
	nodes, err := s.Nodes(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(owners) != n || keys != n || len(nodes) != n {
		t.Fatalf("%d subnets claimed by %d keys, %d node records, want %d each", len(owners), keys, len(nodes), n)
	}
	for _, nd := range nodes {
		if owners[subnetKeyName(nd.Subnet)] != nd.Name || s.recordLease(t, nd.Name) != s.mustLease(t, nd.Name) {
			t.Fatalf("record of %s (%s) disagrees with the claims", nd.Name, nd.Subnet)
		}
	}
}

func leaseCount(t testing.TB, s *Store) int {
	t.Helper()
	resp, err := s.Client().Leases(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// recordLease is the lease the record of node name is bound to.
func (s *Store) recordLease(t testing.TB, name string) clientv3.LeaseID {
	t.Helper()
	resp, err := s.Client().Get(testCtx(t), s.key(keyNodes+name))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("record of %s: %v", name, err)
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

// mustLease is the lease the claim of node name is bound to.
func (s *Store) mustLease(t testing.TB, name string) clientv3.LeaseID {
	t.Helper()
	resp, err := s.Client().Get(testCtx(t), s.key(keyClaims+name+"/"), clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("no claim of %s: %v", name, err)
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

func TestAcquireRestartKeepsSubnet(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, v4Config)
	acquire(t, s, "a", cluster.Node{}, testTTL)
	old := acquire(t, s, "b", cluster.Node{}, testTTL)
	acquire(t, s, "c", cluster.Node{}, testTTL)

	// A restarted agent: a new client, no local state, the old lease alive.
	s2, err := Open(testCtx(t), Config{Endpoints: []string{sharedURL(t)}, Prefix: s.Prefix()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	l := acquire(t, s2, "b", cluster.Node{}, testTTL)
	if got, want := cidrString(l.Node().Subnet), cidrString(old.Node().Subnet); got != want {
		t.Fatalf("restarted b got %s, want its old %s", got, want)
	}
	if l.ID() == old.ID() {
		t.Fatal("restart reused the old lease")
	}
	ttl, err := s.Client().TimeToLive(testCtx(t), old.ID())
	if err != nil || ttl.TTL != -1 {
		t.Fatalf("old lease after restart: ttl %v, err %v; want revoked (-1)", ttl, err)
	}
	if got := s.mustLease(t, "b"); got != l.ID() {
		t.Fatalf("claim bound to lease %x, want the new %x", got, l.ID())
	}
	nodes, _ := s.Nodes(testCtx(t))
	if len(nodes) != 3 || nodes[1].Name != "b" || s.recordLease(t, "b") != l.ID() {
		t.Fatalf("nodes after restart: %+v", nodes)
	}
	if owners, keys := subnetOwners(t, s); len(owners) != 3 || keys != 3 {
		t.Fatalf("claims after restart: %v in %d keys", owners, keys)
	}
}

func TestAcquirePrefer(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, cluster.Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00:10:244::/56"})
	acquire(t, s, "a", cluster.Node{}, testTTL) // holds 10.244.0.0/24, fd00:10:244::/64
	for _, tc := range []struct {
		name         string
		prefer       cluster.Node
		want4, want6 string
	}{
		{"free", cluster.Node{Subnet: mustCIDR(t, "10.244.7.0/24"), Subnet6: mustCIDR(t, "fd00:10:244:9::/64")}, "10.244.7.0/24", "fd00:10:244:9::/64"},
		{"taken", cluster.Node{Subnet: mustCIDR(t, "10.244.0.0/24"), Subnet6: mustCIDR(t, "fd00:10:244::/64")}, "10.244.1.0/24", "fd00:10:244:1::/64"},
		{"outside", cluster.Node{Subnet: mustCIDR(t, "10.9.0.0/24"), Subnet6: mustCIDR(t, "fd00:99::/64")}, "10.244.2.0/24", "fd00:10:244:2::/64"},
		{"wrong size", cluster.Node{Subnet: mustCIDR(t, "10.244.8.0/25"), Subnet6: mustCIDR(t, "fd00:10:244:8::/80")}, "10.244.3.0/24", "fd00:10:244:3::/64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := acquire(t, s, tc.name, tc.prefer, testTTL).Node()
			if cidrString(n.Subnet) != tc.want4 || cidrString(n.Subnet6) != tc.want6 {
				t.Fatalf("got %s %s, want %s %s", n.Subnet, n.Subnet6, tc.want4, tc.want6)
			}
		})
	}
}

func TestAcquireExhausted(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, cluster.Config{ClusterCIDR: "10.9.0.0/28", SubnetSize: 30})
	for i := range 4 {
		acquire(t, s, fmt.Sprintf("n%d", i), cluster.Node{}, testTTL)
	}
	before := leaseCount(t, s)
	_, err := s.Acquire(testCtx(t), cluster.Node{Name: "n4"}, cluster.Node{}, testTTL)
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "all 4 /30 subnets of 10.9.0.0/28 are leased") {
		t.Fatalf("fifth node: err = %v, want exhaustion naming 10.9.0.0/28 and /30", err)
	}
	// The failed attempt left no lease or key behind.
	if owners, keys := subnetOwners(t, s); len(owners) != 4 || keys != 4 {
		t.Fatalf("claims after exhaustion: %v in %d keys", owners, keys)
	}
	if after := leaseCount(t, s); after != before {
		t.Fatalf("%d etcd leases before the failed acquire, %d after", before, after)
	}
	if _, err := s.Acquire(testCtx(t), cluster.Node{Name: "x/y"}, cluster.Node{}, testTTL); err == nil {
		t.Fatal("node name with / accepted")
	}
}

func TestAcquireDualStackAndV6Only(t *testing.T) {
	for _, tc := range []struct {
		name         string
		cfg          cluster.Config
		want4, want6 []string
	}{
		{"dual", cluster.Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00:10:244::/56"},
			[]string{"10.244.0.0/24", "10.244.1.0/24"}, []string{"fd00:10:244::/64", "fd00:10:244:1::/64"}},
		{"v6only", cluster.Config{ClusterCIDR6: "fd00:10:244::/64", SubnetSize6: 112},
			[]string{"", ""}, []string{"fd00:10:244::/112", "fd00:10:244::1:0/112"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			withConfig(t, s, tc.cfg)
			for i := range 2 {
				l, err := s.Acquire(testCtx(t), cluster.Node{Name: fmt.Sprint(i), IP6: net.ParseIP("2001:db8::1")}, cluster.Node{}, testTTL)
				if err != nil {
					t.Fatal(err)
				}
				n := l.Node()
				if cidrString(n.Subnet) != tc.want4[i] || cidrString(n.Subnet6) != tc.want6[i] {
					t.Fatalf("node %d got %v %v, want %s %s", i, n.Subnet, n.Subnet6, tc.want4[i], tc.want6[i])
				}
			}
			nodes, err := s.Nodes(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			if len(nodes) != 2 || cidrString(nodes[1].Subnet6) != tc.want6[1] || !nodes[1].IP6.Equal(net.ParseIP("2001:db8::1")) {
				t.Fatalf("records: %+v", nodes)
			}
		})
	}
}

func TestAcquireNeedsConfig(t *testing.T) {
	s := newStore(t)
	if _, err := s.Acquire(testCtx(t), cluster.Node{Name: "a"}, cluster.Node{}, testTTL); !errors.Is(err, ErrNoClusterConfig) {
		t.Fatalf("acquire without config: %v", err)
	}
}

// watch runs WatchNodes and sends each node set, as "name=subnet" lines.
func watch(t testing.TB, s *Store) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.WatchNodes(ctx, func(nodes []cluster.Node) {
			var b []string
			for _, n := range nodes {
				b = append(b, n.Name+"="+cidrString(n.Subnet))
			}
			ch <- strings.Join(b, " ")
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ch
}

// expect reads node sets from ch until one equals want.
func expect(t testing.TB, ch <-chan string, want string) {
	t.Helper()
	ctx := testCtx(t)
	var last string
	for {
		select {
		case got := <-ch:
			if got == want {
				return
			}
			last = got
		case <-ctx.Done():
			t.Fatalf("watch never saw %q; last %q", want, last)
		}
	}
}

func TestWatchNodesJoinLeaveRelease(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, v4Config)
	a := acquire(t, s, "a", cluster.Node{}, testTTL)
	ch := watch(t, s)
	expect(t, ch, "a=10.244.0.0/24")
	b := acquire(t, s, "b", cluster.Node{}, testTTL)
	expect(t, ch, "a=10.244.0.0/24 b=10.244.1.0/24")
	if err := b.Update(testCtx(t), cluster.Node{Name: "b", VTEPMAC: "02:00:00:00:00:0b"}); err != nil {
		t.Fatal(err)
	}
	nodes, _ := s.Nodes(testCtx(t))
	if nodes[1].VTEPMAC != "02:00:00:00:00:0b" || cidrString(nodes[1].Subnet) != "10.244.1.0/24" {
		t.Fatalf("after update: %+v", nodes[1])
	}
	if err := b.Update(testCtx(t), cluster.Node{Name: "c"}); err == nil {
		t.Fatal("update of another node's record accepted")
	}

	// Release: record and claim vanish at once.
	if err := a.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	nodes, _ = s.Nodes(testCtx(t))
	owners, keys := subnetOwners(t, s)
	if len(nodes) != 1 || nodes[0].Name != "b" || keys != 1 || owners["10.244.1.0_24"] != "b" {
		t.Fatalf("after release: nodes %+v, subnets %v", nodes, owners)
	}
	expect(t, ch, "b=10.244.1.0/24")
	// Run after Release returns at once.
	if err := a.Run(testCtx(t), nil); err != nil {
		t.Fatal(err)
	}
	// The released subnet is free again.
	if got := acquire(t, s, "c", cluster.Node{}, testTTL).Node().Subnet.String(); got != "10.244.0.0/24" {
		t.Fatalf("after release the next node got %s, want 10.244.0.0/24", got)
	}
	expect(t, ch, "b=10.244.1.0/24 c=10.244.0.0/24")
}

func TestLeaseExpiryReclaims(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, v4Config)
	ch := watch(t, s)
	expect(t, ch, "")
	keep := acquire(t, s, "keep", cluster.Node{}, 2*time.Second)
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error)
	go func() { ran <- keep.Run(runCtx, nil) }()
	defer func() { stop(); <-ran }()
	acquire(t, s, "dead", cluster.Node{}, 2*time.Second) // nobody keeps it alive
	expect(t, ch, "dead=10.244.1.0/24 keep=10.244.0.0/24")
	expect(t, ch, "keep=10.244.0.0/24")
	if owners, keys := subnetOwners(t, s); len(owners) != 1 || keys != 1 {
		t.Fatalf("after expiry: %v in %d keys", owners, keys)
	}
	if got := acquire(t, s, "new", cluster.Node{}, testTTL).Node().Subnet.String(); got != "10.244.1.0/24" {
		t.Fatalf("reclaimed subnet went elsewhere: new got %s", got)
	}
	if st := keep.Stats(); st.Renewals == 0 || st.Reacquisitions != 0 {
		t.Fatalf("kept lease stats %+v, want renewals and no re-acquisition", st)
	}
}

func TestRunReacquiresRevokedLease(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, v4Config)
	acquire(t, s, "a", cluster.Node{}, testTTL)
	l := acquire(t, s, "b", cluster.Node{}, 2*time.Second)
	if err := l.Update(testCtx(t), cluster.Node{Name: "b", VTEPMAC: "02:00:00:00:00:0b"}); err != nil {
		t.Fatal(err)
	}
	type change struct{ old, cur cluster.Node }
	changes := make(chan change, 1)
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error)
	go func() { ran <- l.Run(ctx, func(old, cur cluster.Node) { changes <- change{old, cur} }) }()

	first := l.ID()
	if _, err := s.Client().Revoke(testCtx(t), first); err != nil {
		t.Fatal(err)
	}
	var c change
	select {
	case c = <-changes:
	case <-testCtx(t).Done():
		t.Fatal("Run did not re-acquire the revoked lease")
	}
	if c.cur.Subnet.String() != "10.244.1.0/24" || c.old.Subnet.String() != "10.244.1.0/24" || c.cur.VTEPMAC != "02:00:00:00:00:0b" {
		t.Fatalf("re-acquired %+v (was %+v), want the same subnet and record", c.cur, c.old)
	}
	if l.ID() == first || s.mustLease(t, "b") != l.ID() {
		t.Fatalf("lease %x after re-acquisition, key bound to %x", l.ID(), s.mustLease(t, "b"))
	}
	if st := l.Stats(); st.Reacquisitions != 1 {
		t.Fatalf("stats %+v, want 1 re-acquisition", st)
	}
	waitFor(t, "a renewal of the new lease", func() bool { return l.Stats().Renewals > 0 })
	stop()
	if err := <-ran; err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
}

func TestRunReleaseStops(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, v4Config)
	l := acquire(t, s, "a", cluster.Node{}, 2*time.Second)
	ran := make(chan error)
	go func() { ran <- l.Run(context.Background(), nil) }()
	waitFor(t, "a renewal", func() bool { return l.Stats().Renewals > 0 })
	if err := l.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if nodes, _ := s.Nodes(testCtx(t)); len(nodes) != 0 || l.Stats().Reacquisitions != 0 {
		t.Fatalf("after release: %+v, stats %+v", nodes, l.Stats())
	}
}

// TestWatchNodesRefusesForgedRecords writes records around the subnet
// leases, as a host that could write to etcd would: one claiming a subnet
// another node holds (named to sort first), one claiming halves of the
// address space nobody leased, one with no subnet. The watch never hands
// them out, and counts them.
func TestWatchNodesRefusesForgedRecords(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, v4Config)
	acquire(t, s, "b", cluster.Node{}, testTTL)
	ch := watch(t, s)
	expect(t, ch, "b=10.244.0.0/24")
	before := testutil.ToFloat64(s.refusedRecords)
	for _, rec := range []string{
		`{"name":"a","ip":"192.0.2.66","subnet":"10.244.0.0/24"}`,
		`{"name":"evil","ip":"192.0.2.66","subnet":"0.0.0.0/1"}`,
		`{"name":"empty","ip":"192.0.2.66"}`,
	} {
		var n cluster.Node
		if err := json.Unmarshal([]byte(rec), &n); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Client().Put(testCtx(t), s.key(keyNodes+n.Name), rec); err != nil {
			t.Fatal(err)
		}
	}
	// A later legitimate change still comes through, without the forgeries.
	acquire(t, s, "c", cluster.Node{}, testTTL)
	expect(t, ch, "b=10.244.0.0/24 c=10.244.1.0/24")
	if got := testutil.ToFloat64(s.refusedRecords) - before; got != 3 {
		t.Fatalf("refused records counted %v, want 3", got)
	}
	// A claim taken from c by a takes c's record out, and a's stays out.
	sn := mustCIDR(t, "10.244.1.0/24")
	if _, err := s.Client().Txn(testCtx(t)).Then(
		clientv3.OpDelete(s.claimKey("c", sn)), clientv3.OpPut(s.claimKey("a", sn), sn.String()),
	).Commit(); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "b=10.244.0.0/24")
}

// claimRevisions are the create and mod revisions of node's claim of sn.
func claimRevisions(t testing.TB, s *Store, node string, sn *net.IPNet) (create, mod int64) {
	t.Helper()
	resp, err := s.Client().Get(testCtx(t), s.claimKey(node, sn))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("claim of %s by %s: %v", sn, node, err)
	}
	return resp.Kvs[0].CreateRevision, resp.Kvs[0].ModRevision
}

// TestLateClaimLoses: a node claims a subnet a live node holds and names it
// in its record, as a compromised node may (the claim is under its own
// name). The watch keeps handing out the older claim's node only: as is,
// and when that node restarts (rebinding its claim to a new lease keeps
// the claim's create revision, so its precedence). The late claim wins only
// when the older one is gone: its node left, or lost its lease and came
// back with a fresh claim, of another subnet.
func TestLateClaimLoses(t *testing.T) {
	for _, tc := range []struct {
		name string
		then func(t *testing.T, s *Store, a *Lease)
		want string
	}{
		{"as is", func(*testing.T, *Store, *Lease) {}, "a=10.244.0.0/24 c=10.244.1.0/24"},
		{"owner restarts", func(t *testing.T, s *Store, a *Lease) {
			sn := a.Node().Subnet
			create, mod := claimRevisions(t, s, "a", sn)
			s2, err := Open(testCtx(t), Config{Endpoints: []string{sharedURL(t)}, Prefix: s.Prefix()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s2.Close() })
			if got := acquire(t, s2, "a", cluster.Node{}, testTTL).Node().Subnet; got.String() != sn.String() {
				t.Fatalf("restarted a got %s, want %s", got, sn)
			}
			if create2, mod2 := claimRevisions(t, s, "a", sn); create2 != create || mod2 <= mod {
				t.Fatalf("rebound claim: create revision %d → %d, mod %d → %d; want the same create revision, a later mod", create, create2, mod, mod2)
			}
		}, "a=10.244.0.0/24 c=10.244.1.0/24"},
		{"owner leaves", func(t *testing.T, _ *Store, a *Lease) {
			if err := a.Release(testCtx(t)); err != nil {
				t.Fatal(err)
			}
		}, "c=10.244.1.0/24 x=10.244.0.0/24"},
		{"owner loses its lease", func(t *testing.T, s *Store, a *Lease) {
			if _, err := s.Client().Revoke(testCtx(t), a.ID()); err != nil {
				t.Fatal(err)
			}
			a.reacquireLost(testCtx(t), newBackoff(), nil)
		}, "a=10.244.1.0/24 c=10.244.2.0/24 x=10.244.0.0/24"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			withConfig(t, s, v4Config)
			a := acquire(t, s, "a", cluster.Node{}, testTTL)
			sn := a.Node().Subnet
			ch := watch(t, s)
			expect(t, ch, "a=10.244.0.0/24")
			if _, err := s.Client().Txn(testCtx(t)).Then(
				clientv3.OpPut(s.claimKey("x", sn), sn.String()),
				clientv3.OpPut(s.key(keyNodes+"x"), `{"name":"x","ip":"192.0.2.66","subnet":"10.244.0.0/24"}`),
			).Commit(); err != nil {
				t.Fatal(err)
			}
			tc.then(t, s, a)
			// A node joining after all that: the watch has seen it all.
			acquire(t, s, "c", cluster.Node{}, testTTL)
			expect(t, ch, tc.want)
		})
	}
}

// TestRaceLoserBacksOff: a node whose claim is not its subnet's first
// (another node's claim was created between its read and its write)
// deletes that claim and keeps the ones it won; acquiring again, it keeps
// the subnet it won and does not take the lost one.
func TestRaceLoserBacksOff(t *testing.T) {
	s := newStore(t)
	withConfig(t, s, v4Config)
	lost := acquire(t, s, "a", cluster.Node{}, testTTL).Node().Subnet
	won := mustCIDR(t, "10.244.5.0/24")
	for _, sn := range []*net.IPNet{lost, won} { // b's claims as its transaction left them
		if _, err := s.Client().Put(testCtx(t), s.claimKey("b", sn), sn.String()); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name     string
		picked   []*net.IPNet
		wantLost bool
		wantKeys int
	}{
		{"won", []*net.IPNet{won}, false, 3},
		{"one lost", []*net.IPNet{lost, won}, true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := s.Client().Get(testCtx(t), s.key(keyClaims), clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.dropLost(testCtx(t), "b", tc.picked, resp.Kvs)
			if err != nil || got != tc.wantLost {
				t.Fatalf("lost = %v, %v; want %v", got, err, tc.wantLost)
			}
			if owners, keys := subnetOwners(t, s); keys != tc.wantKeys || owners[subnetKeyName(lost)] != "a" || owners[subnetKeyName(won)] != "b" {
				t.Fatalf("claims: %v in %d keys, want %d keys", owners, keys, tc.wantKeys)
			}
		})
	}
	if got := acquire(t, s, "b", cluster.Node{Subnet: lost}, testTTL).Node().Subnet; got.String() != won.String() {
		t.Fatalf("b acquired %s, want the subnet it won, %s", got, won)
	}
}
