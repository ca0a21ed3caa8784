// Package dataplane enforces a node's policy.Model in nftables: one inet
// table, podnet-policy, programmed through netlink (internal/nft) in one
// transaction per Sync.
//
// # Layout
//
// Two base chains, both of priority filter, hook where the pods' traffic
// crosses the node: forward (a pod to another pod, on this node or
// another, or to the outside, and the outside to a pod; the routed veth
// sends all of it through the node's routing) and input (a pod to the
// node's own addresses: only the pod's egress applies). There is no
// output chain: the node's own traffic to its pods (kubelet probes)
// passes. The forward and input hooks come after prerouting, where the
// service proxy DNATs (policies see the backend pod's address, not the
// ClusterIP), and before postrouting, where traffic is masqueraded
// (policies see the pod's own address).
//
//	forward, input:
//	  ct state established,related accept      # only a connection's first packet is evaluated
//	  iiftype loopback accept                  # input only: the node to itself
//	  icmpv6 type 133-137 accept               # input only: neighbour discovery (untracked)
//	  ip saddr vmap @egress4 / ip6 saddr vmap @egress6
//	  ip saddr @pod-cidrs4 drop / ip6 …        # a source in the node's pod CIDRs that is no pod
//	  goto dispatch-ingress
//	dispatch-ingress:
//	  ip daddr vmap @ingress4 / ip6 daddr vmap @ingress6
//	  fib daddr type local accept              # the node's own addresses
//	  ip daddr @pod-cidrs4 drop / ip6 …        # a destination in the node's pod CIDRs that is no pod
//
// A packet in state invalid (or untracked) is not accepted by the first
// rule: it is evaluated like a connection's first packet.
//
// The verdict maps, keyed by a local pod's address, lead to the pod's
// chain for the direction: egress first (the source pod), whose accept
// is a goto to dispatch-ingress (the destination pod's ingress: both
// must accept a pod-to-pod connection), then ingress, whose accept is
// accept. A pod no policy concerns in a direction has the direction's
// accept as its verdict and no chain. The per-packet cost is thus two
// map lookups and the rules of the two pods' own chains, however many
// pods and policies the cluster has; and it is paid once per connection.
//
// A pod's chain (ingress/NAMESPACE/NAME, egress/…) follows the Model's
// evaluation order: the admin tier's rules in order (Accept: the
// direction's accept; Deny: goto the deny chain of the policy; Pass:
// goto the NetworkPolicy part, a chain …/np of its own when the pod has
// Pass rules), then, when a NetworkPolicy isolates the pod, its rules
// (accept) and a goto to the deny chain of the isolating policies; else
// the baseline tier's rules (Accept, Deny) and accept. A rule matches
// the peer's address (the source for ingress, the destination for
// egress) in an interval set per family (an AddrSet's ranges, name
// suffixed 4 or 6), the destination's protocol . port in an interval set
// of port ranges (ports-HASH, shared by every rule of the same ports),
// or the destination address . protocol . port in a set (an
// EndpointSet: named ports, suffixed -ep4, -ep6). Sets are shared across
// pods by name: pods coming and going change elements, not rules.
//
// A deny chain (deny/TIER/DIRECTION/POLICY) logs to the nflog group
// Config.LogGroup, when set, at most 10 packets a second, prefixed
// "TIER DIRECTION POLICY"; counts in the named counter of the same name;
// and drops. Denied reads the counters.
//
// # Syncs
//
// The first Sync of a Table (and the one after a failed Sync) deletes
// and rewrites the table in one transaction: connections established
// before it keep flowing (conntrack keeps them, and the new table
// accepts them at once), so an agent restart cuts nothing. A later Sync
// compares the Model's state with the last one written and sends only
// the difference: set and map elements added and deleted, chains added,
// rewritten (flushed and refilled) or deleted, sets and counters added
// or deleted.
//
// kube-network-policies (v0.8.0) hooks a single chain in postrouting
// (priority srcnat-5, before masquerading) and sends the first packet of
// every connection to its agent through nfqueue, which evaluates the
// policies in user space. podnet evaluates in the kernel, in forward and
// input: no queueing, no agent on the packet path (traffic flows while
// the agent restarts), and the node's own traffic is never evaluated.
package dataplane

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/policy"
)

// TableName is the name of the inet table the policy data plane owns.
const TableName = "podnet-policy"

// The tiers of Denied.
const (
	TierAdmin         = "admin"
	TierNetworkPolicy = "networkpolicy"
	TierBaseline      = "baseline"
)

// Config is a node's policy data plane configuration.
type Config struct {
	// NetNSFd is the node's network namespace; 0 is the caller's.
	NetNSFd int
	// PodCIDRs are the node's own pod subnets: an address in them that
	// is no Model pod's is dropped both ways, so that no pod passes
	// traffic before its policy is in the kernel.
	PodCIDRs []netip.Prefix
	// LogGroup is the nflog group denied packets are logged to
	// (rate-limited, prefixed "TIER DIRECTION POLICY"); 0: not logged.
	LogGroup uint16
}

// Stats describes a Sync: what the table holds after it, and what it
// wrote.
type Stats struct {
	// Full is true for a sync that rewrote the whole table.
	Full bool
	// Pods are the pods programmed; Chains, Sets (and maps), Elements
	// (of the sets and maps) and Rules the table's objects.
	Pods, Chains, Sets, Elements, Rules int
	// Written is the number of objects (chains, a rewritten chain's
	// rules counted as one, sets, set elements, counters) added, changed
	// or deleted.
	Written int
}

// Denied is the number of packets denied under one key.
type Denied struct {
	// Tier is TierAdmin, TierNetworkPolicy or TierBaseline.
	Tier string
	// Policy is the ClusterNetworkPolicy's name, or for NetworkPolicy
	// the namespace/name of the policies isolating the pod, joined with
	// ",".
	Policy string
	// Direction is "ingress" or "egress".
	Direction string
	Packets   uint64
}

// Table is the policy data plane's nftables table in one network
// namespace. Its methods are safe for concurrent use; syncs are
// serialized.
type Table struct {
	mu    sync.Mutex
	cfg   Config
	conn  *nft.Conn
	fixed map[string][][]expr.Any // the fixed chains' rules
	// last is the state the kernel holds after the last successful
	// Sync; nil until a full sync succeeded (again, after a failure).
	last *state
}

// New opens the policy table in cfg's network namespace. It writes
// nothing: the first Sync rewrites the table.
func New(cfg Config) (*Table, error) {
	cfg.PodCIDRs = slices.Clone(cfg.PodCIDRs)
	if _, err := fixedSets(&cfg); err != nil {
		return nil, fmt.Errorf("policy data plane: %w", err)
	}
	conn, err := nft.New(cfg.NetNSFd)
	if err != nil {
		return nil, fmt.Errorf("policy data plane: %w", err)
	}
	return &Table{cfg: cfg, conn: conn, fixed: fixedRules()}, nil
}

// Close releases the table's netlink sockets; the table stays in the
// kernel, and keeps enforcing the last Model.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.conn.Close()
}

// Cleanup removes the policy table from the network namespace netnsFd
// (0: the caller's), if it is there.
func Cleanup(netnsFd int) error {
	conn, err := nft.New(netnsFd)
	if err != nil {
		return fmt.Errorf("remove policy table: %w", err)
	}
	defer conn.Close()
	var b nft.Batch
	b.DelTable(table)
	if err := conn.Send(&b); err != nil {
		return fmt.Errorf("remove policy table: %w", err)
	}
	return nil
}

// Sync converges the kernel to m, the node's complete Model, in one
// nftables transaction: the first Sync of a Table (and the one after a
// failed Sync) rewrites the table atomically, later ones write only what
// changed. An invalid Model (an address of two pods, a rule naming a set
// the Model lacks, …) is an error, and nothing is written.
func (t *Table) Sync(m *policy.Model) (Stats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m == nil {
		return Stats{}, fmt.Errorf("policy data plane: nil model")
	}
	next, err := plan(&t.cfg, m)
	if err != nil {
		return Stats{}, fmt.Errorf("policy data plane: %w", err)
	}
	full := t.last == nil
	old := t.last
	if full {
		old = &state{}
	}
	var b nft.Batch
	written := t.write(&b, full, old, next)
	if err := t.conn.Send(&b); err != nil {
		t.last = nil
		return Stats{}, fmt.Errorf("policy data plane: sync %d pods: %w", len(m.Pods), err)
	}
	t.last = next
	st := Stats{Full: full, Pods: len(m.Pods), Sets: len(next.sets), Written: written,
		Chains: len(fixedChains) + len(next.chains) + len(next.counters)}
	for _, s := range next.sets {
		st.Elements += len(s.elems)
	}
	for _, rs := range t.fixed {
		st.Rules += len(rs)
	}
	for _, rs := range next.chains {
		st.Rules += len(rs)
	}
	for name, k := range next.counters {
		st.Rules += len(t.cfg.denyRules(name, k))
	}
	return st, nil
}

// write queues what turns old into next (everything, after deleting the
// table, when full) and returns the number of objects written. The order
// keeps every reference valid: sets, counters and chains are created
// before the rules and map elements that name them, and deleted after
// the last of those is gone.
func (t *Table) write(b *nft.Batch, full bool, old, next *state) int {
	written := 0
	if full {
		b.DelTable(table)
		b.AddTable(table)
	}
	isMap := func(s *setState) bool { return s.set.IsMap() }
	sets, counters, chains := sortedKeys(next.sets), sortedKeys(next.counters), sortedKeys(next.chains)
	// Sets and their elements, the verdict maps' excepted.
	for _, name := range sets {
		s := next.sets[name]
		o := old.sets[name]
		if o == nil {
			b.AddSet(s.set)
			written++
		}
		if !isMap(s) {
			written += t.elements(b, o, s)
		}
	}
	for _, name := range counters {
		if _, ok := old.counters[name]; !ok {
			b.AddCounter(table, name)
			written++
		}
	}
	// Chains: all created before any rule, a rule may go to any of them.
	if full {
		for _, ch := range fixedChains {
			b.AddChain(ch)
		}
		written += len(fixedChains)
	}
	for _, name := range counters {
		if _, ok := old.counters[name]; !ok {
			b.AddChain(regularChain(name))
		}
	}
	for _, name := range chains {
		if _, ok := old.chains[name]; !ok {
			b.AddChain(regularChain(name))
		}
	}
	if full {
		for _, ch := range fixedChains {
			for _, r := range t.fixed[ch.Name] {
				b.AddRule(ch, r)
			}
		}
	}
	for _, name := range counters {
		if _, ok := old.counters[name]; ok {
			continue
		}
		for _, r := range t.cfg.denyRules(name, next.counters[name]) {
			b.AddRule(regularChain(name), r)
		}
	}
	for _, name := range chains {
		rules := next.chains[name]
		oldRules, ok := old.chains[name]
		switch {
		case !ok:
		case slices.Equal(oldRules, rules):
			continue
		default:
			b.FlushChain(regularChain(name))
		}
		for i := range rules {
			b.AddRule(regularChain(name), rules[i].exprs())
		}
		written++
	}
	// The maps' elements, once the chains they go to exist.
	for _, name := range sets {
		if s := next.sets[name]; isMap(s) {
			written += t.elements(b, old.sets[name], s)
		}
	}
	// Stale chains, those that go to others first: a pod's chain before
	// its NetworkPolicy part, both before the deny chains.
	var stale []string
	for name := range old.chains {
		if _, ok := next.chains[name]; !ok {
			stale = append(stale, name)
		}
	}
	sort.Slice(stale, func(i, j int) bool {
		pi, pj := strings.HasSuffix(stale[i], suffixPolicy), strings.HasSuffix(stale[j], suffixPolicy)
		if pi != pj {
			return pj
		}
		return stale[i] < stale[j]
	})
	for _, name := range stale {
		b.DelChain(regularChain(name))
		written++
	}
	for _, name := range sortedKeys(old.counters) {
		if _, ok := next.counters[name]; !ok {
			b.DelChain(regularChain(name))
			b.DelCounter(table, name)
			written++
		}
	}
	for _, name := range sortedKeys(old.sets) {
		if _, ok := next.sets[name]; !ok {
			b.DelSet(old.sets[name].set)
			written++
		}
	}
	return written
}

// elements queues the element changes of a set from o (nil: new) to s
// and returns their number.
func (t *Table) elements(b *nft.Batch, o, s *setState) int {
	var have []nftables.SetElement
	if o != nil {
		have = o.elems
		// The plan lists a set's elements in a stable order: an unchanged
		// set (most of them) needs no diff.
		if slices.EqualFunc(have, s.elems, sameElement) {
			return 0
		}
	}
	add, del := nft.Diff(have, s.elems)
	if len(del) > 0 {
		b.DelElements(s.set, del)
	}
	if len(add) > 0 {
		b.AddElements(s.set, add)
	}
	return len(add) + len(del)
}

// sameElement tells whether two elements the plan made are the same.
func sameElement(a, b nftables.SetElement) bool {
	if !bytes.Equal(a.Key, b.Key) || !bytes.Equal(a.KeyEnd, b.KeyEnd) || a.IntervalEnd != b.IntervalEnd {
		return false
	}
	if a.VerdictData == nil || b.VerdictData == nil {
		return a.VerdictData == b.VerdictData
	}
	return *a.VerdictData == *b.VerdictData
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Denied returns the packets denied since each deny counter was created,
// per key, for the keys of the last successful Sync.
func (t *Table) Denied() ([]Denied, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		return nil, nil
	}
	counters, err := t.conn.Counters(table)
	if err != nil {
		return nil, fmt.Errorf("policy data plane: %w", err)
	}
	var out []Denied
	for _, c := range counters {
		if k, ok := t.last.counters[c.Name]; ok {
			k.Packets = c.Packets
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b Denied) int {
		return strings.Compare(a.Tier+"\x00"+a.Direction+"\x00"+a.Policy, b.Tier+"\x00"+b.Direction+"\x00"+b.Policy)
	})
	return out, nil
}
