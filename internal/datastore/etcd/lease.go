package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podnet/podnet/internal/datastore"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podnet/podnet/internal/cluster"
)

// Lease is a node's hold on its record and pod subnets: etcd keys bound to
// one etcd lease that Run keeps alive. It is a datastore.Membership.
type Lease struct {
	s   *Store
	ttl time.Duration

	mu        sync.Mutex
	node      cluster.Node
	id        clientv3.LeaseID
	released  bool
	renewals  atomic.Uint64
	confirmed atomic.Int64 // unix nanoseconds of the last grant or renewal
	reacquire atomic.Uint64
}

// LeaseStats counts a Lease's keepalive renewals and re-acquisitions (the
// lease was lost and its keys re-created), for metrics.
type LeaseStats struct {
	Renewals       uint64
	Reacquisitions uint64
}

// Acquire leases node subnets for n.Name — one per family of the stored
// cluster config — and writes n's record, all bound to a new etcd lease
// with the given TTL: the grace period before a dead node's record and
// subnets vanish and can be leased again.
//
// A node holds a subnet by its claim key (see claims): the subnet belongs to
// the live claim etcd created first. The subnet the node already holds is
// given back (a restarted agent keeps its subnet: its keys still exist
// under the old lease; they are rebound to the new lease, keeping the
// claim's create revision, and the old lease is revoked), else prefer's
// subnet (the agent's last one, from its local state) if nobody else claims
// it and it fits the config, else the first subnet nobody else claims, in
// address order. The claims and the record are written in one etcd
// transaction, which also reads the claims back: when another node claimed
// a picked subnet first, the node deletes its claim and picks again, so two
// nodes never hold the same subnet.
// When a family has no free subnet the error wraps ErrExhausted and names
// the CIDR and subnet size. n's Subnet fields are ignored. A node name must
// be held by one agent at a time.
func (s *Store) Acquire(ctx context.Context, n cluster.Node, prefer cluster.Node, ttl time.Duration) (*Lease, error) {
	if n.Name == "" || strings.Contains(n.Name, "/") {
		return nil, fmt.Errorf("datastore: acquire: bad node name %q", n.Name)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("datastore: acquire: lease TTL %v must be positive", ttl)
	}
	l := &Lease{s: s, ttl: ttl}
	node, id, err := l.acquire(ctx, n, prefer)
	if err != nil {
		return nil, err
	}
	l.node, l.id = node, id
	l.confirmed.Store(time.Now().UnixNano())
	return l, nil
}

// acquire grants a lease and binds n's record and subnets to it.
func (l *Lease) acquire(ctx context.Context, n cluster.Node, prefer cluster.Node) (cluster.Node, clientv3.LeaseID, error) {
	s := l.s
	cfg, err := s.ClusterConfig(ctx)
	if err != nil {
		return cluster.Node{}, 0, fmt.Errorf("datastore: acquire %s: %w", n.Name, err)
	}
	ttlSec := int64(math.Ceil(l.ttl.Seconds()))
	g, err := s.cli.Grant(ctx, ttlSec)
	if err != nil {
		return cluster.Node{}, 0, fmt.Errorf("datastore: acquire %s: grant lease: %w", n.Name, err)
	}
	node, old, err := s.bind(ctx, g.ID, n, prefer, cfg)
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		s.cli.Revoke(rctx, g.ID)
		cancel()
		return cluster.Node{}, 0, fmt.Errorf("datastore: acquire %s: %w", n.Name, err)
	}
	for _, o := range old {
		if _, err := s.cli.Revoke(ctx, o); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.log.Warn("revoking the node's previous lease failed; it expires by itself", "node", n.Name, "lease", int64(o), "err", err)
		}
	}
	return node, g.ID, nil
}

// bind writes n's record and one claim per family under lease id in a
// transaction that also reads the claims back. A claim that is not its
// subnet's first (lowest create revision) lost a race to another node's:
// bind deletes it and picks again. It returns the record and the node's
// other leases (to revoke).
func (s *Store) bind(ctx context.Context, id clientv3.LeaseID, n cluster.Node, prefer cluster.Node, cfg cluster.Config) (cluster.Node, []clientv3.LeaseID, error) {
	v4, v6 := pools(cfg)
	nodeKey := s.key(keyNodes + n.Name)
	listClaims := clientv3.OpGet(s.key(keyClaims), clientv3.WithPrefix())
	for ctx.Err() == nil {
		resp, err := s.cli.Txn(ctx).Then(listClaims, clientv3.OpGet(nodeKey)).Commit()
		if err != nil {
			return cluster.Node{}, nil, fmt.Errorf("read claims: %w", err)
		}
		cs := claims{}
		oldLeases := map[clientv3.LeaseID]bool{}
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			cs.put(s, kv)
			if node, _, _ := s.parseClaimKey(string(kv.Key)); node == n.Name {
				oldLeases[clientv3.LeaseID(kv.Lease)] = true
			}
		}
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			oldLeases[clientv3.LeaseID(kv.Lease)] = true
		}
		held, taken := map[string]bool{}, map[string]bool{}
		for sn := range cs {
			if cs.owner(sn) == n.Name {
				held[sn] = true
			}
			if cs.claimedByOthers(sn, n.Name) {
				taken[sn] = true
			}
		}

		rec := n
		rec.Subnet, rec.Subnet6 = nil, nil
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		var picked []*net.IPNet
		pick := func(p *pool, preferred *net.IPNet) (*net.IPNet, error) {
			if p == nil {
				return nil, nil
			}
			sn := heldIn(p, held)
			if sn == nil && p.contains(preferred) && !taken[subnetKeyName(preferred)] {
				sn = preferred
			}
			if sn == nil {
				var err error
				if sn, err = p.firstFree(taken); err != nil {
					return nil, err
				}
			}
			// The claim is as read: absent, or the node's own, which the
			// put rebinds to the new lease keeping its create revision.
			key := s.claimKey(n.Name, sn)
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", cs[subnetKeyName(sn)][n.Name]))
			ops = append(ops, clientv3.OpPut(key, sn.String(), clientv3.WithLease(id)))
			picked = append(picked, sn)
			return sn, nil
		}
		if rec.Subnet, err = pick(v4, prefer.Subnet); err != nil {
			return cluster.Node{}, nil, err
		}
		if rec.Subnet6, err = pick(v6, prefer.Subnet6); err != nil {
			return cluster.Node{}, nil, err
		}
		val, err := json.Marshal(rec)
		if err != nil {
			return cluster.Node{}, nil, err
		}
		ops = append(ops, clientv3.OpPut(nodeKey, string(val), clientv3.WithLease(id)), listClaims)
		tr, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return cluster.Node{}, nil, fmt.Errorf("claim subnets: %w", err)
		}
		if !tr.Succeeded {
			continue // the node's own claim changed between read and write
		}
		lost, err := s.dropLost(ctx, n.Name, picked, tr.Responses[len(tr.Responses)-1].GetResponseRange().Kvs)
		if err != nil {
			return cluster.Node{}, nil, err
		}
		if lost {
			continue // another node claimed a subnet first
		}
		delete(oldLeases, id)
		delete(oldLeases, clientv3.NoLease)
		old := make([]clientv3.LeaseID, 0, len(oldLeases))
		for o := range oldLeases {
			old = append(old, o)
		}
		return rec, old, nil
	}
	return cluster.Node{}, nil, ctx.Err()
}

// dropLost deletes node's claims among picked that are not their subnet's
// first in kvs (the claims as the node's transaction left them): another
// node claimed that subnet first. It reports whether it dropped any.
func (s *Store) dropLost(ctx context.Context, node string, picked []*net.IPNet, kvs []*mvccpb.KeyValue) (bool, error) {
	cs := claims{}
	for _, kv := range kvs {
		cs.put(s, kv)
	}
	var dels []clientv3.Op
	for _, sn := range picked {
		if owner := cs.owner(subnetKeyName(sn)); owner != node {
			s.log.Info("another node claimed the subnet first, trying another", "node", node, "subnet", sn, "owner", owner)
			dels = append(dels, clientv3.OpDelete(s.claimKey(node, sn)))
		}
	}
	if len(dels) == 0 {
		return false, nil
	}
	if _, err := s.cli.Txn(ctx).Then(dels...).Commit(); err != nil {
		return true, fmt.Errorf("drop lost claims: %w", err)
	}
	return true, nil
}

// heldIn is a subnet of p among the subnets the node holds, or nil.
func heldIn(p *pool, held map[string]bool) *net.IPNet {
	var best *net.IPNet
	for k := range held {
		sn, err := parseSubnetKeyName(k)
		if err != nil || !p.contains(sn) {
			continue
		}
		if best == nil || k < subnetKeyName(best) {
			best = sn // deterministic when several are held
		}
	}
	return best
}

// Healthy is nil while etcd confirmed the lease (granted or renewed it)
// within its TTL; else it says since when it did not. A node whose lease
// went that long unconfirmed may already have lost it: its peers may be
// dropping its routes, and the datastore is likely unreachable.
func (l *Lease) Healthy() error {
	last := time.Unix(0, l.confirmed.Load())
	if since := time.Since(last); since > l.ttl {
		return fmt.Errorf("etcd has not renewed the node's lease for %s (TTL %s): the datastore is unreachable or the lease lost", since.Round(time.Second), l.ttl)
	}
	return nil
}

// Node is the node's record as last written.
func (l *Lease) Node() cluster.Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.node
}

// ID is the current etcd lease.
func (l *Lease) ID() clientv3.LeaseID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.id
}

// Stats are the renewal and re-acquisition counts so far.
func (l *Lease) Stats() LeaseStats {
	return LeaseStats{Renewals: l.renewals.Load(), Reacquisitions: l.reacquire.Load()}
}

// Run keeps the lease alive until ctx is done or Release was called, then
// returns nil. When the lease is lost (it expired during a partition, was
// revoked, or etcd lost it) Run re-acquires: a new lease, the same subnets
// if still free (else as Acquire chooses), the record re-created; it counts
// that in Stats and calls changed (when not nil) with the record before and
// after. While etcd is unreachable it retries with backoff.
func (l *Lease) Run(ctx context.Context, changed func(old, cur cluster.Node)) error {
	b := newBackoff()
	for {
		id := l.ID()
		if l.isReleased() || ctx.Err() != nil {
			return nil
		}
		kctx, cancel := context.WithCancel(ctx)
		ch, err := l.s.cli.KeepAlive(kctx, id)
		if err == nil {
			for range ch {
				l.renewals.Add(1)
				l.confirmed.Store(time.Now().UnixNano())
				l.s.renewals.Inc()
				b.reset()
			}
		}
		cancel()
		if l.isReleased() || ctx.Err() != nil {
			return nil
		}
		tctx, tcancel := context.WithTimeout(ctx, l.ttl+time.Second)
		ttl, err := l.s.cli.TimeToLive(tctx, id)
		tcancel()
		switch {
		case err == nil && ttl.TTL > 0:
			// The lease lives; only the keepalive stream broke.
			b.wait(ctx)
		case err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound):
			l.s.log.Warn("lease keepalive: etcd unreachable, retrying", "lease", int64(id), "err", err)
			b.wait(ctx)
		default:
			l.reacquireLost(ctx, b, changed)
		}
	}
}

// reacquireLost binds the node to a new lease, retrying until it succeeds,
// ctx ends or the lease is released.
func (l *Lease) reacquireLost(ctx context.Context, b *backoff, changed func(old, cur cluster.Node)) {
	old := l.Node()
	l.s.log.Warn("lease lost, re-acquiring", "node", old.Name, "lease", int64(l.ID()))
	for ctx.Err() == nil && !l.isReleased() {
		node, id, err := l.acquire(ctx, old, old)
		if err != nil {
			l.s.log.Warn("re-acquiring lease failed, retrying", "node", old.Name, "err", err)
			b.wait(ctx)
			continue
		}
		l.mu.Lock()
		if l.released {
			l.mu.Unlock()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			l.s.cli.Revoke(rctx, id)
			cancel()
			return
		}
		l.node, l.id = node, id
		l.confirmed.Store(time.Now().UnixNano())
		l.mu.Unlock()
		l.reacquire.Add(1)
		l.s.reacquisitions.Inc()
		l.s.log.Info("lease re-acquired", "node", node.Name, "lease", int64(id), "subnet", node.Subnet, "subnet6", node.Subnet6)
		if changed != nil {
			changed(old, node)
		}
		return
	}
}

func (l *Lease) isReleased() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.released
}

// Update rewrites the node's record (underlay addresses, VTEP MAC) under
// the same lease; the name and the leased subnets stay as they are. When
// the lease is lost the error says so, and Run's re-acquisition writes the
// updated record.
func (l *Lease) Update(ctx context.Context, n cluster.Node) error {
	l.mu.Lock()
	if n.Name != l.node.Name {
		l.mu.Unlock()
		return fmt.Errorf("datastore: update: node %q is not the leased node %q", n.Name, l.node.Name)
	}
	n.Subnet, n.Subnet6 = l.node.Subnet, l.node.Subnet6
	l.node = n
	id := l.id
	l.mu.Unlock()
	val, err := json.Marshal(n)
	if err != nil {
		return err
	}
	if _, err := l.s.cli.Put(ctx, l.s.key(keyNodes+n.Name), string(val), clientv3.WithLease(id)); err != nil {
		return fmt.Errorf("datastore: update node %s: %w", n.Name, err)
	}
	return nil
}

// Release revokes the lease: the node's record and claims vanish at
// once (a graceful leave), and Run returns.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	l.released = true
	id := l.id
	l.mu.Unlock()
	if _, err := l.s.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("datastore: release %s: %w", l.Node().Name, err)
	}
	return nil
}

var _ datastore.Membership = (*Lease)(nil)
