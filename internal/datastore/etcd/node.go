package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podnet/podnet/internal/cluster"
)

// decodeNode reads a node record; the name comes from the key.
func (s *Store) decodeNode(kv *mvccpb.KeyValue) (cluster.Node, error) {
	var n cluster.Node
	if err := json.Unmarshal(kv.Value, &n); err != nil {
		return cluster.Node{}, fmt.Errorf("datastore: node record %s: %w", kv.Key, err)
	}
	n.Name = strings.TrimPrefix(string(kv.Key), s.key(keyNodes))
	return n, nil
}

// Nodes lists every node record, sorted by name. Records that do not
// decode are left out and logged.
func (s *Store) Nodes(ctx context.Context) ([]cluster.Node, error) {
	nodes, _, err := s.listNodes(ctx)
	if err != nil {
		return nil, err
	}
	return sortedNodes(nodes), nil
}

func (s *Store) listNodes(ctx context.Context) (map[string]cluster.Node, int64, error) {
	resp, err := s.cli.Get(ctx, s.key(keyNodes), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("datastore: list nodes: %w", err)
	}
	nodes := make(map[string]cluster.Node, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, err := s.decodeNode(kv)
		if err != nil {
			s.log.Warn("skipping node record", "err", err)
			continue
		}
		nodes[n.Name] = n
	}
	return nodes, resp.Header.Revision, nil
}

func sortedNodes(m map[string]cluster.Node) []cluster.Node {
	out := make([]cluster.Node, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b cluster.Node) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// WatchNodes calls f with the complete current set of valid node records,
// sorted by name, at start and after every change, until ctx is done; then
// it returns nil. A record is valid when each of its subnets belongs to it:
// its node's claim of the subnet is the subnet's first (see claims). A
// record written around the claims (naming a subnet another node claimed
// first, or one nobody claims) is left out and logged, whatever the names
// and whoever wrote it, so a forged, late or stale claim never wins. It lists, then watches the whole prefix from the list's
// revision; when the watch fails (compaction, lost leader, connection) it
// lists again, retrying with backoff while etcd is unreachable. f runs on
// WatchNodes' goroutine: the next change waits for it.
func (s *Store) WatchNodes(ctx context.Context, f func([]cluster.Node)) error {
	wctx := clientv3.WithRequireLeader(ctx)
	b := newBackoff()
	for ctx.Err() == nil {
		v, rev, err := s.listView(wctx)
		if err != nil {
			s.log.Warn("watch nodes: list failed, retrying", "err", err)
			b.wait(ctx)
			continue
		}
		b.reset()
		f(v.valid())
		for wr := range s.cli.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if err := wr.Err(); err != nil {
				s.log.Info("watch nodes: watch ended, listing again", "err", err)
				break
			}
			changed := false
			for _, ev := range wr.Events {
				changed = v.apply(ev) || changed
			}
			if changed {
				f(v.valid())
			}
		}
	}
	return nil
}

// view is what WatchNodes follows: the node records and the claims.
type view struct {
	s       *Store
	nodes   map[string]cluster.Node
	claims  claims
	refused map[string]string // node name → why, as last logged
}

// listView reads the records and the claims at one revision.
func (s *Store) listView(ctx context.Context) (*view, int64, error) {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("datastore: list nodes: %w", err)
	}
	v := &view{s: s, nodes: map[string]cluster.Node{}, claims: claims{}, refused: map[string]string{}}
	for _, kv := range resp.Kvs {
		v.put(kv)
	}
	return v, resp.Header.Revision, nil
}

// apply follows one watch event; it reports whether a record or a claim
// changed.
func (v *view) apply(ev *clientv3.Event) bool {
	if ev.Type == clientv3.EventTypeDelete {
		k := string(ev.Kv.Key)
		if name, ok := strings.CutPrefix(k, v.s.key(keyNodes)); ok {
			delete(v.nodes, name)
			return true
		}
		return v.claims.remove(v.s, k)
	}
	return v.put(ev.Kv)
}

// put records a node record or a claim; other keys are ignored.
func (v *view) put(kv *mvccpb.KeyValue) bool {
	if v.claims.put(v.s, kv) {
		return true
	}
	name, ok := strings.CutPrefix(string(kv.Key), v.s.key(keyNodes))
	if !ok {
		return false
	}
	n, err := v.s.decodeNode(kv)
	if err != nil {
		v.s.log.Warn("skipping node record", "err", err)
		delete(v.nodes, name)
		return true
	}
	v.nodes[name] = n
	return true
}

// valid is the records whose subnets belong to them; the others are logged
// when their refusal is new.
func (v *view) valid() []cluster.Node {
	out := make(map[string]cluster.Node, len(v.nodes))
	refused := map[string]string{}
	for name, n := range v.nodes {
		if why := v.disowned(n); why != "" {
			refused[name] = why
			continue
		}
		out[name] = n
	}
	for name, why := range refused {
		if v.refused[name] != why {
			v.s.log.Error("refusing a node record whose subnets are not its own", "node", name, "why", why)
			v.s.refusedRecords.Inc()
		}
	}
	v.refused = refused
	return sortedNodes(out)
}

// disowned says why n's subnets do not all belong to n, or "".
func (v *view) disowned(n cluster.Node) string {
	if n.Subnet == nil && n.Subnet6 == nil {
		return "it holds no subnet"
	}
	for _, sn := range []*net.IPNet{n.Subnet, n.Subnet6} {
		if sn == nil {
			continue
		}
		switch owner := v.claims.owner(subnetKeyName(sn)); {
		case owner == "":
			return fmt.Sprintf("subnet %s is claimed by nobody", sn)
		case owner != n.Name:
			return fmt.Sprintf("subnet %s is claimed first by %q", sn, owner)
		}
	}
	return ""
}

// backoff waits 250 ms, doubling up to 5 s, between retries.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 250 * time.Millisecond} }

func (b *backoff) reset() { b.d = 250 * time.Millisecond }

// wait sleeps the current delay or until ctx ends, then doubles the delay.
func (b *backoff) wait(ctx context.Context) {
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	b.d = min(2*b.d, 5*time.Second)
}
