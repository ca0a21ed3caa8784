package kubeapi

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/internal/cluster"
)

// WatchNodes calls f with the complete set of node records — every Node
// with podCIDRs and valid podnet annotations — sorted by name, once the
// informer listed the Nodes and after every change of the set, until ctx
// ends; then it returns nil. A Node whose annotations or podCIDRs are
// malformed is left out, logged (when its refusal is new) and counted. A
// Node deleted from the API leaves the set at once. While the API is
// unreachable the informer retries and the last set stands. f runs on
// WatchNodes' goroutine.
func (s *Store) WatchNodes(ctx context.Context, f func([]cluster.Node)) error {
	inf := s.informer()
	if !inf.waitSynced(ctx) {
		return nil
	}
	var last []cluster.Node
	first := true
	refused := map[string]string{}
	for {
		changed := inf.changes()
		set := s.records(inf.list(), refused)
		if first || !reflect.DeepEqual(set, last) {
			f(set)
			first, last = false, set
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// records are the node records of nodes, sorted by name. The refused ones
// are logged and counted when their refusal is new; refused keeps them
// (name → why) from one call to the next.
func (s *Store) records(nodes []*corev1.Node, refused map[string]string) []cluster.Node {
	out := make([]cluster.Node, 0, len(nodes))
	now := map[string]string{}
	for _, n := range nodes {
		rec, err := record(n)
		if errors.Is(err, errNotYet) {
			continue
		}
		if err != nil {
			why := err.Error()
			now[n.Name] = why
			if refused[n.Name] != why {
				s.log.Error("refusing a Node as a peer: malformed podnet annotations or podCIDRs", "node", n.Name, "why", why)
				s.refusedRecords.Inc()
			}
			continue
		}
		out = append(out, rec)
	}
	clear(refused)
	maps.Copy(refused, now)
	slices.SortFunc(out, func(a, b cluster.Node) int { return strings.Compare(a.Name, b.Name) })
	return out
}
