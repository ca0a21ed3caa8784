package dataplane

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/podnet/podnet/internal/nft"
)

// TableName is the name of the inet table the service proxy owns.
const TableName = "podnet-services"

// Config is a node's service proxy configuration.
type Config struct {
	// NetNSFd is the node's network namespace; 0 is the caller's.
	NetNSFd int
	// ClusterCIDRs are the cluster's pod networks: traffic from outside
	// them to a ClusterIP is masqueraded; local pods' traffic to an
	// externalTrafficPolicy Local external address is internal.
	ClusterCIDRs []netip.Prefix
	// NodePortAddresses restricts NodePorts to the node's local addresses
	// inside these prefixes; empty: every local address of the node
	// (fib daddr type local), loopback excepted.
	NodePortAddresses []netip.Prefix
}

// Stats describes a Sync: what the table holds after it, and what it
// wrote.
type Stats struct {
	// Full is true for a sync that rewrote the whole table.
	Full bool
	// Services and Endpoints are the services programmed and their
	// endpoints (internal and, where they differ, external ones);
	// Chains, Elements and Rules the table's objects (the elements of the
	// sets and maps the service proxy writes, not those the packet path
	// adds for affinity).
	Services, Endpoints, Chains, Elements, Rules int
	// Written is the number of objects (chains, rules of a rewritten
	// chain counted as one, set elements) added, changed or deleted.
	Written int
	// ConntrackFlushed is the number of stale UDP conntrack entries
	// deleted.
	ConntrackFlushed int
}

// Table is the service proxy's nftables table in one network namespace.
// Its methods are safe for concurrent use; syncs are serialized.
type Table struct {
	mu       sync.Mutex
	cfg      Config
	skeleton *skeleton
	sets     map[string]nft.Set
	conn     *nft.Conn
	ct       *netlink.Handle

	// The state the kernel holds after the last successful Sync; synced
	// is false until a full sync succeeded (again, after a failure).
	synced   bool
	services map[string]*programmed // by ID
	groups   groups
	hairpin  map[netip.Addr]int // endpoint address: services using it
	chains   int                // of the services
	rules    int                // of the service chains
	elems    int                // of the services
	eps      int
}

// New opens the service proxy's table in cfg's network namespace. It
// writes nothing: the first Sync rewrites the table.
func New(cfg Config) (*Table, error) {
	sk, err := newSkeleton(&cfg)
	if err != nil {
		return nil, fmt.Errorf("service proxy: %w", err)
	}
	conn, err := nft.New(cfg.NetNSFd)
	if err != nil {
		return nil, fmt.Errorf("service proxy: %w", err)
	}
	var ct *netlink.Handle
	if cfg.NetNSFd != 0 {
		ct, err = netlink.NewHandleAt(netns.NsHandle(cfg.NetNSFd))
	} else {
		ct, err = netlink.NewHandle()
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("service proxy: conntrack netlink: %w", err)
	}
	t := &Table{cfg: cfg, skeleton: sk, sets: map[string]nft.Set{}, conn: conn, ct: ct}
	for _, s := range sk.sets {
		t.sets[s.Name] = s
	}
	return t, nil
}

// Close releases the table's netlink sockets; the table stays in the
// kernel, and traffic keeps flowing through it.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ct.Close()
	return t.conn.Close()
}

// Cleanup removes the service proxy's table from the network namespace
// netnsFd (0: the caller's), if it is there.
func Cleanup(netnsFd int) error {
	conn, err := nft.New(netnsFd)
	if err != nil {
		return fmt.Errorf("remove service proxy table: %w", err)
	}
	defer conn.Close()
	err = conn.Transact(func(tx *nft.Tx) (bool, error) {
		tx.DelTable(table)
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("remove service proxy table: %w", err)
	}
	return nil
}

// Sync converges the kernel to services, the node's complete desired set,
// in one nftables transaction. The first Sync of a Table (and the one
// after a failed sync) rewrites the whole table atomically, so traffic
// keeps flowing across an agent restart; later ones write only what
// changed. It then flushes the stale UDP conntrack entries of removed
// endpoints, and those of services that had none.
func (t *Table) Sync(services []Service) (Stats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	want, err := byServiceID(services)
	if err != nil {
		return Stats{}, err
	}
	full := !t.synced
	if full {
		t.services, t.groups, t.hairpin = map[string]*programmed{}, groups{}, map[netip.Addr]int{}
		t.chains, t.rules, t.elems, t.eps = 0, 0, 0, 0
	}
	var removed []string
	for id := range t.services {
		if want[id] == nil {
			removed = append(removed, id)
		}
	}
	return t.apply(full, want, removed)
}

// Update is Sync told only what changed since the last sync: services
// holds the services added or changed (unchanged ones may be among
// them), removed the IDs of those gone; the others stay as programmed.
// Its cost grows with the change, not with the services programmed. It
// needs a table in sync: before the first Sync, and after a failed sync,
// it fails and Sync must come first.
func (t *Table) Update(services []Service, removed []string) (Stats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.synced {
		return Stats{}, errors.New("service proxy: the table is not in sync: a full Sync must come first")
	}
	want, err := byServiceID(services)
	if err != nil {
		return Stats{}, err
	}
	for _, id := range removed {
		if want[id] != nil {
			return Stats{}, fmt.Errorf("service %s both changed and removed", id)
		}
	}
	return t.apply(false, want, removed)
}

// byServiceID validates services and indexes them by ID.
func byServiceID(services []Service) (map[string]*Service, error) {
	want := make(map[string]*Service, len(services))
	for i := range services {
		s := &services[i]
		if err := validate(s); err != nil {
			return nil, err
		}
		if want[s.ID()] != nil {
			return nil, fmt.Errorf("service %s given twice", s.ID())
		}
		want[s.ID()] = s
	}
	return want, nil
}

// apply writes the services of want that differ from what the table
// holds and removes those of removed, in one transaction; a full one
// rewrites the table (its state reset by the caller). The table's state
// follows on success; after a failure the next sync must be full.
func (t *Table) apply(full bool, want map[string]*Service, removed []string) (Stats, error) {
	var changes []change
	elems := 0
	for id, s := range want {
		o := t.services[id]
		if o != nil && equalService(&o.svc, s) {
			continue
		}
		p := t.render(s, o)
		changes = append(changes, change{id, o, p})
		elems += len(p.elems)
	}
	for _, id := range removed {
		if o := t.services[id]; o != nil {
			t.releaseGroups(o)
			changes = append(changes, change{id, o, nil})
		}
	}
	// A full sync adds every element: room for them up front.
	d := diff{addElems: make([]element, 0, elems)}
	for _, c := range changes {
		d.service(c.old, c.new)
	}
	hairpin := t.hairpinCounts(&d)

	var b nft.Batch
	t.write(&b, full, &d, hairpin)
	if err := t.conn.Send(&b); err != nil {
		t.synced = false
		return Stats{}, fmt.Errorf("service proxy: sync %d changed services: %w", len(changes), err)
	}
	t.synced = true
	for _, c := range changes {
		if c.new == nil {
			delete(t.services, c.id)
		} else {
			t.services[c.id] = c.new
		}
	}
	t.hairpin = hairpin.counts
	t.chains += d.chains
	t.rules += d.rules
	t.elems += d.elems
	t.eps += d.eps

	st := Stats{
		Full:      full,
		Services:  len(t.services),
		Endpoints: t.eps,
		Chains:    len(t.skeleton.chains) + t.chains,
		Elements:  t.skeleton.elemCount() + t.elems + len(t.hairpin),
		Rules:     t.skeleton.ruleCount() + t.rules,
		Written:   d.written + hairpin.written,
	}
	if full {
		st.Written += len(t.skeleton.sets) + len(t.skeleton.chains) + t.skeleton.elemCount()
	}
	n, err := t.flushConntrack(full, changes)
	st.ConntrackFlushed = n
	if err != nil {
		return st, fmt.Errorf("service proxy: %w", err)
	}
	return st, nil
}

// change is one service's change: old or new is nil for a service added
// or removed.
type change struct {
	id       string
	old, new *programmed
}

// releaseGroups gives back the group numbers of a removed service.
func (t *Table) releaseGroups(p *programmed) {
	for _, g := range p.groups() {
		t.groups.release(g)
	}
}

// equalService tells whether a and b program the same.
func equalService(a, b *Service) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.PortName == b.PortName &&
		a.Protocol == b.Protocol && a.Family == b.Family && a.ClusterIP == b.ClusterIP &&
		a.Port == b.Port && a.NodePort == b.NodePort && a.ExternalLocal == b.ExternalLocal &&
		a.Affinity == b.Affinity && slices.Equal(a.ExternalIPs, b.ExternalIPs) &&
		slices.Equal(a.LoadBalancerIPs, b.LoadBalancerIPs) && slices.Equal(a.SourceRanges, b.SourceRanges) &&
		slices.Equal(a.Internal, b.Internal) && slices.Equal(a.External, b.External) && slices.Equal(a.Cluster, b.Cluster)
}

// diff is what a sync writes.
type diff struct {
	addChains, rewriteChains, delChains []chainWrite
	addElems, delElems                  []element
	changes                             []addrChange
	written                             int
	chains, rules, elems, eps           int // changes of the totals
}

// addrChange is the hairpin addresses a service stopped and started
// using (programmed.hairpin).
type addrChange struct{ removed, added []netip.Addr }

// chainWrite is a service chain to write, with its rules.
type chainWrite struct {
	name  string
	rules [][]expr.Any
}

// service adds what turns old into p (either may be nil) to the diff.
func (d *diff) service(old, p *programmed) {
	var oldChains, newChains []chainState
	var oldElems, newElems []element
	var oldAddrs, newAddrs []netip.Addr
	if old != nil {
		oldChains, oldElems, oldAddrs = old.chains, old.elems, old.hairpin
		d.eps -= old.endpointCount()
	}
	if p != nil {
		newChains, newElems, newAddrs = p.chains, p.elems, p.hairpin
		d.eps += p.endpointCount()
	}
	var c addrChange
	for _, a := range oldAddrs {
		if !slices.Contains(newAddrs, a) {
			c.removed = append(c.removed, a)
		}
	}
	for _, a := range newAddrs {
		if !slices.Contains(oldAddrs, a) {
			c.added = append(c.added, a)
		}
	}
	if len(c.removed)+len(c.added) > 0 {
		d.changes = append(d.changes, c)
	}

	for i := range newChains {
		nc := &newChains[i]
		rules := nc.plan.rules()
		nc.rules = len(rules)
		oc := findChain(oldChains, nc.name)
		switch {
		case oc == nil:
			d.addChains = append(d.addChains, chainWrite{nc.name, rules})
			d.chains++
		case oc.plan != nc.plan:
			d.rewriteChains = append(d.rewriteChains, chainWrite{nc.name, rules})
			d.rules -= oc.rules
		default:
			continue
		}
		d.rules += nc.rules
		d.written++
	}
	for _, oc := range oldChains {
		if findChain(newChains, oc.name) == nil {
			d.delChains = append(d.delChains, chainWrite{name: oc.name})
			d.chains--
			d.rules -= oc.rules
			d.written++
		}
	}

	// Element maps only when both sides have elements: a new or removed
	// service (every service of a full sync) needs none.
	have, want := byID(oldElems, len(newElems) > 0), byID(newElems, len(oldElems) > 0)
	for _, e := range newElems {
		if o, ok := have[e.id()]; !ok || !sameElem(o.elem, e.elem) {
			d.addElems = append(d.addElems, e)
			d.elems += e.count()
			d.written += e.count()
		}
	}
	for _, e := range oldElems {
		if n, ok := want[e.id()]; !ok || !sameElem(n.elem, e.elem) {
			d.delElems = append(d.delElems, e)
			d.elems -= e.count()
			d.written += e.count()
		}
	}
}

// byID indexes elems by set and key when needed, nil otherwise.
func byID(elems []element, needed bool) map[elemID]element {
	if !needed || len(elems) == 0 {
		return nil
	}
	m := make(map[elemID]element, len(elems))
	for _, e := range elems {
		m[e.id()] = e
	}
	return m
}

// findChain returns the chain called name, nil when there is none.
func findChain(chains []chainState, name string) *chainState {
	for i := range chains {
		if chains[i].name == name {
			return &chains[i]
		}
	}
	return nil
}

// endpointCount is the number of endpoints of the service's groups.
func (p *programmed) endpointCount() int {
	n := 0
	for _, g := range p.groups() {
		if g != nil {
			n += len(g.slots)
		}
	}
	return n
}

// hairpinUpdate is the new hairpin reference counts and the elements to
// add and delete.
type hairpinUpdate struct {
	counts   map[netip.Addr]int
	add, del []netip.Addr
	written  int
}

// hairpinCounts computes the hairpin set after the diff's services
// changes: one element per hairpin address in use. It updates the
// table's counts in place: after a failed sync they are rebuilt by the
// full sync that follows.
func (t *Table) hairpinCounts(d *diff) hairpinUpdate {
	h := hairpinUpdate{counts: t.hairpin}
	for _, c := range d.changes {
		for _, a := range c.removed {
			if h.counts[a]--; h.counts[a] == 0 {
				delete(h.counts, a)
				h.del = append(h.del, a)
			}
		}
		for _, a := range c.added {
			if h.counts[a]++; h.counts[a] == 1 {
				h.add = append(h.add, a)
			}
		}
	}
	h.written = len(h.add) + len(h.del)
	return h
}

// write queues the diff: the sets of new firewall chains, new chains
// and rewritten chains' rules first (elements refer to chains), then
// stale elements out and new ones in, then stale chains out (nothing
// refers to them any more) and the sets of the firewall chains gone.
func (t *Table) write(b *nft.Batch, full bool, d *diff, h hairpinUpdate) {
	if full {
		b.DelTable(table)
		t.skeleton.write(b)
	}
	addRules := func(cw chainWrite) {
		ch := regularChain(cw.name)
		for _, r := range cw.rules {
			b.AddRule(ch, r)
		}
	}
	for _, cw := range d.addChains {
		if strings.HasPrefix(cw.name, prefixFirewall) {
			b.AddSet(sourcesSet(cw.name))
		}
		b.AddChain(regularChain(cw.name))
	}
	for _, cw := range d.addChains {
		addRules(cw)
	}
	for _, cw := range d.rewriteChains {
		b.FlushChain(regularChain(cw.name))
		addRules(cw)
	}
	t.writeElems(b, d.delElems, (*nft.Batch).DelElements)
	t.writeElems(b, d.addElems, (*nft.Batch).AddElements)
	// External chains go first: they may goto the service and cluster
	// chains.
	for _, ext := range []bool{true, false} {
		for _, cw := range d.delChains {
			if strings.HasPrefix(cw.name, prefixExternal) == ext {
				b.DelChain(regularChain(cw.name))
			}
		}
	}
	for _, cw := range d.delChains {
		if strings.HasPrefix(cw.name, prefixFirewall) {
			b.DelSet(sourcesSet(cw.name))
		}
	}
	for _, fam := range families {
		s := t.sets[fam.set(setHairpin)]
		b.DelElements(s, hairpinElements(h.del, fam))
		b.AddElements(s, hairpinElements(h.add, fam))
	}
}

// hairpinElements returns the hairpin set elements of the addresses of
// fam.
func hairpinElements(addrs []netip.Addr, fam family) []nftables.SetElement {
	n := 0
	for _, a := range addrs {
		if a.Is4() == (fam.f == IPv4) {
			n++
		}
	}
	out := make([]nftables.SetElement, 0, n)
	for _, a := range addrs {
		if a.Is4() == (fam.f == IPv4) {
			out = append(out, nftables.SetElement{Key: hairpinKey(a)})
		}
	}
	return out
}

// writeElems queues op for the elements, one call per set: the
// skeleton's, then the firewall chains' source sets. The sets' lists are
// sized up front: a full sync's hundred thousand elements are copied
// once.
func (t *Table) writeElems(b *nft.Batch, elems []element, op func(*nft.Batch, nft.Set, []nftables.SetElement)) {
	counts := map[string]int{}
	for _, e := range elems {
		counts[e.set] += e.count()
	}
	bySet := make(map[string][]nftables.SetElement, len(counts))
	for set, n := range counts {
		bySet[set] = make([]nftables.SetElement, 0, n)
	}
	for _, e := range elems {
		bySet[e.set] = append(bySet[e.set], e.elem)
		if e.end != nil {
			bySet[e.set] = append(bySet[e.set], nftables.SetElement{Key: e.end, IntervalEnd: true})
		}
	}
	for _, s := range t.skeleton.sets {
		if es := bySet[s.Name]; len(es) > 0 {
			op(b, s, es)
			delete(bySet, s.Name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(bySet)) {
		op(b, sourcesSet(prefixFirewall+strings.TrimPrefix(name, prefixSources)), bySet[name])
	}
}
