package datastore

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
)

// Node is one node's record, as every agent sees it.
type Node struct {
	// Name is the node's name, unique in the cluster.
	Name string `json:"name"`
	// IP is the node's underlay IPv4 address.
	IP net.IP `json:"ip,omitempty"`
	// IP6 is the node's underlay IPv6 address, optional.
	IP6 net.IP `json:"ip6,omitempty"`
	// Subnet is the node's leased IPv4 pod subnet (nil in an IPv6-only
	// cluster); JSON as CIDR text.
	Subnet *net.IPNet `json:"subnet,omitempty"`
	// Subnet6 is the node's leased IPv6 pod subnet (dual-stack or
	// IPv6-only); JSON as CIDR text.
	Subnet6 *net.IPNet `json:"subnet6,omitempty"`
	// VTEPMAC is the MAC address of the node's VXLAN device.
	VTEPMAC string `json:"vtepMAC,omitempty"`
	// LeaseID is the etcd lease the record is bound to; filled when read,
	// not stored in the record.
	LeaseID int64 `json:"-"`
}

type nodeJSON struct {
	Name    string `json:"name"`
	IP      net.IP `json:"ip,omitempty"`
	IP6     net.IP `json:"ip6,omitempty"`
	Subnet  string `json:"subnet,omitempty"`
	Subnet6 string `json:"subnet6,omitempty"`
	VTEPMAC string `json:"vtepMAC,omitempty"`
}

// MarshalJSON writes the subnets as CIDR text.
func (n Node) MarshalJSON() ([]byte, error) {
	j := nodeJSON{Name: n.Name, IP: n.IP, IP6: n.IP6, VTEPMAC: n.VTEPMAC}
	if n.Subnet != nil {
		j.Subnet = n.Subnet.String()
	}
	if n.Subnet6 != nil {
		j.Subnet6 = n.Subnet6.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the subnets from CIDR text.
func (n *Node) UnmarshalJSON(b []byte) error {
	var j nodeJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*n = Node{Name: j.Name, IP: j.IP, IP6: j.IP6, VTEPMAC: j.VTEPMAC}
	var err error
	if n.Subnet, err = parseSubnet(j.Subnet); err != nil {
		return fmt.Errorf("node %s: subnet: %w", j.Name, err)
	}
	if n.Subnet6, err = parseSubnet(j.Subnet6); err != nil {
		return fmt.Errorf("node %s: subnet6: %w", j.Name, err)
	}
	return nil
}

func parseSubnet(s string) (*net.IPNet, error) {
	if s == "" {
		return nil, nil
	}
	_, n, err := net.ParseCIDR(s)
	return n, err
}

// decodeNode reads a node record; the name comes from the key.
func (s *Store) decodeNode(kv *mvccpb.KeyValue) (Node, error) {
	var n Node
	if err := json.Unmarshal(kv.Value, &n); err != nil {
		return Node{}, fmt.Errorf("datastore: node record %s: %w", kv.Key, err)
	}
	n.Name = strings.TrimPrefix(string(kv.Key), s.key(keyNodes))
	n.LeaseID = kv.Lease
	return n, nil
}

// Nodes lists every node record, sorted by name. Records that do not
// decode are left out and logged.
func (s *Store) Nodes(ctx context.Context) ([]Node, error) {
	nodes, _, err := s.listNodes(ctx)
	if err != nil {
		return nil, err
	}
	return sortedNodes(nodes), nil
}

func (s *Store) listNodes(ctx context.Context) (map[string]Node, int64, error) {
	resp, err := s.cli.Get(ctx, s.key(keyNodes), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("datastore: list nodes: %w", err)
	}
	nodes := make(map[string]Node, len(resp.Kvs))
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

func sortedNodes(m map[string]Node) []Node {
	out := make([]Node, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// WatchNodes calls f with the complete current set of nodes (as Nodes
// returns it) at start and after every change, until ctx is done; then it
// returns nil. It lists, then watches from the list's revision; when the
// watch fails (compaction, lost leader, connection) it lists again, retrying
// with backoff while etcd is unreachable. f runs on WatchNodes' goroutine:
// the next change waits for it.
func (s *Store) WatchNodes(ctx context.Context, f func([]Node)) error {
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
