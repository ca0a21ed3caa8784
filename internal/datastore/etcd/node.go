package etcd

import (
	"context"
	"encoding/json"
	"fmt"
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

// WatchNodes calls f with the complete current set of nodes (as Nodes
// returns it) at start and after every change, until ctx is done; then it
// returns nil. It lists, then watches from the list's revision; when the
// watch fails (compaction, lost leader, connection) it lists again, retrying
// with backoff while etcd is unreachable. f runs on WatchNodes' goroutine:
// the next change waits for it.
func (s *Store) WatchNodes(ctx context.Context, f func([]cluster.Node)) error {
	wctx := clientv3.WithRequireLeader(ctx)
	prefix := s.key(keyNodes)
	b := newBackoff()
	for ctx.Err() == nil {
		nodes, rev, err := s.listNodes(wctx)
		if err != nil {
			s.log.Warn("watch nodes: list failed, retrying", "err", err)
			b.wait(ctx)
			continue
		}
		b.reset()
		f(sortedNodes(nodes))
		for wr := range s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if err := wr.Err(); err != nil {
				s.log.Info("watch nodes: watch ended, listing again", "err", err)
				break
			}
			for _, ev := range wr.Events {
				name := strings.TrimPrefix(string(ev.Kv.Key), prefix)
				if ev.Type == clientv3.EventTypeDelete {
					delete(nodes, name)
					continue
				}
				n, err := s.decodeNode(ev.Kv)
				if err != nil {
					s.log.Warn("skipping node record", "err", err)
					delete(nodes, name)
					continue
				}
				nodes[name] = n
			}
			if len(wr.Events) > 0 {
				f(sortedNodes(nodes))
			}
		}
	}
	return nil
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
