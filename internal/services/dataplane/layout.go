package dataplane

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/nft/exprs"
)

// The table's sets and maps, per family (the name ends in 4 or 6).
const (
	// setServiceIPs maps ClusterIP, external and load-balancer IP . proto
	// . port to the service's chain.
	setServiceIPs = "service-ips"
	// setClusterIPs holds the ClusterIP . proto . port of the services
	// with endpoints: their traffic from outside the cluster CIDRs is
	// masqueraded (marked by the dispatch, one rule for all services).
	setClusterIPs = "cluster-ips"
	// setNodePorts maps proto . node port to the service's external chain.
	setNodePorts = "service-nodeports"
	// setNoEndpoints and setNoEndpointNodePorts map the same keys of
	// services without endpoints to a reject or drop verdict.
	setNoEndpoints         = "no-endpoint-services"
	setNoEndpointNodePorts = "no-endpoint-nodeports"
	// setFirewallIPs maps the load-balancer IP . proto . port of the
	// services with loadBalancerSourceRanges to their firewall chain.
	setFirewallIPs = "firewall-ips"
	// setClusterCIDRs holds the cluster's pod networks (Config.ClusterCIDRs).
	setClusterCIDRs = "cluster-cidrs"
	// setNodePortIPs holds Config.NodePortAddresses.
	setNodePortIPs = "nodeport-addresses"
	// setEndpoints maps group . slot to an endpoint's address . port; it
	// is split in endpointMaps maps (endpoints4-0 … endpoints4-63), a
	// group's in the map of its number modulo endpointMaps. The kernel
	// checks every element added to a map against every rule that reads
	// it: with one map for all services, programming n services would
	// take n² checks.
	setEndpoints = "endpoints"
	endpointMaps = 64
	// setServiceEndpoints maps ClusterIP . proto . port . slot to an
	// endpoint's address . port for the services without a chain of
	// their own (see plainService): the pick chains read it.
	setServiceEndpoints = "service-endpoints"
	// affinityEntries bounds the affinity set (the kernel's default for
	// a dynamic set is 65535): pinned clients of all services together.
	affinityEntries = 1 << 20
	// setAffinity holds group . slot . client address of the clients
	// pinned to an endpoint,
	// filled from the packet path with the affinity timeout.
	setAffinity = "affinity"
	// setHairpin holds address . address of every endpoint address: a
	// connection DNATed from an endpoint to itself is masqueraded.
	setHairpin = "hairpin"
)

// The table's chains besides one or two per service.
const (
	chainFilterPrerouting = "filter-prerouting"
	chainFilterInput      = "filter-input"
	chainFilterForward    = "filter-forward"
	chainFilterOutput     = "filter-output"
	chainNATPrerouting    = "nat-prerouting"
	chainNATOutput        = "nat-output"
	chainNATPostroute     = "nat-postrouting"
	chainServices         = "services"
	chainReject           = "reject-chain"
	// prefixPick names the pick chains, pick4-<n> and pick6-<n> for n
	// in 1..maxPick: the chain picks one of n endpoints of the
	// service the packet is addressed to from @service-endpoints.
	prefixPick = "pick"
)

// maxPick is the largest endpoint count a service without a chain of
// its own may have: one shared pick chain per count and family.
const maxPick = 32

// Service chain names: the service's internal traffic (its ClusterIP, and
// external traffic short-circuited as internal), its external traffic
// (node ports, external and load-balancer IPs), the short-circuited
// traffic when its endpoints (the cluster's) are not the internal ones,
// and the firewall of its load-balancer IPs (loadBalancerSourceRanges),
// with the set of the sources it allows.
const (
	prefixService  = "svc-"
	prefixExternal = "ext-"
	prefixCluster  = "cluster-"
	prefixFirewall = "firewall-"
	prefixSources  = "sources-"
)

var (
	table        = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	acceptPolicy = nftables.ChainPolicyAccept
)

// set returns the name of the family's set called base.
func (fam *family) set(base string) string { return base + fam.suffix }

// sets returns the table's sets and maps for fam.
func (fam *family) sets() []nft.Set {
	a := fam.addrType
	proto, port, mark := nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark
	// Two types never exceed the limit of a concatenation.
	ep, _ := nftables.ConcatSetType(a, port)
	verdict := nftables.TypeVerdict
	sets := []nft.Set{
		{Table: table, Name: fam.set(setServiceIPs), Key: []nftables.SetDatatype{a, proto, port}, Data: verdict},
		{Table: table, Name: fam.set(setClusterIPs), Key: []nftables.SetDatatype{a, proto, port}},
		{Table: table, Name: fam.set(setNodePorts), Key: []nftables.SetDatatype{proto, port}, Data: verdict},
		{Table: table, Name: fam.set(setNoEndpoints), Key: []nftables.SetDatatype{a, proto, port}, Data: verdict},
		{Table: table, Name: fam.set(setNoEndpointNodePorts), Key: []nftables.SetDatatype{proto, port}, Data: verdict},
		{Table: table, Name: fam.set(setFirewallIPs), Key: []nftables.SetDatatype{a, proto, port}, Data: verdict},
		{Table: table, Name: fam.set(setClusterCIDRs), Key: []nftables.SetDatatype{a}, Interval: true},
		{Table: table, Name: fam.set(setNodePortIPs), Key: []nftables.SetDatatype{a}, Interval: true},
		{Table: table, Name: fam.set(setAffinity), Key: []nftables.SetDatatype{mark, mark, a}, Dynamic: true, Timeout: true, Size: affinityEntries},
		{Table: table, Name: fam.set(setHairpin), Key: []nftables.SetDatatype{a, a}},
		{Table: table, Name: fam.set(setServiceEndpoints), Key: []nftables.SetDatatype{a, proto, port, mark}, Data: ep},
	}
	for i := range uint32(endpointMaps) {
		sets = append(sets, nft.Set{Table: table, Name: fam.endpointsMap(i), Key: []nftables.SetDatatype{mark, mark}, Data: ep})
	}
	return sets
}

// endpointsMap is the name of the endpoints map of group idx.
func (fam *family) endpointsMap(idx uint32) string {
	return fmt.Sprintf("%s-%d", fam.set(setEndpoints), idx%endpointMaps)
}

// sourcesSet is the interval set of the sources a firewall chain allows:
// sources-<the service> for firewall-<the service>, whose name ends in
// its family.
func sourcesSet(chain string) nft.Set {
	fam := familyOf(IPv4)
	if strings.HasSuffix(chain, "/"+familyName(IPv6)) {
		fam = familyOf(IPv6)
	}
	return nft.Set{Table: table, Name: prefixSources + strings.TrimPrefix(chain, prefixFirewall), Key: []nftables.SetDatatype{fam.addrType}, Interval: true}
}

// pickChain is the name of the family's pick chain of n endpoints.
func (fam *family) pickChain(n int) string { return fmt.Sprintf("%s%s-%d", prefixPick, fam.suffix, n) }

func regularChain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: table}
}

func baseChain(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: table, Type: typ, Hooknum: hook, Priority: prio, Policy: &acceptPolicy}
}

// The priorities are kube-proxy's: the filter chains see the addresses
// before DNAT.
var (
	prioFilter = nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest - 10)
	baseChains = []*nftables.Chain{
		baseChain(chainFilterPrerouting, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, prioFilter),
		baseChain(chainFilterInput, nftables.ChainTypeFilter, nftables.ChainHookInput, prioFilter),
		baseChain(chainFilterForward, nftables.ChainTypeFilter, nftables.ChainHookForward, prioFilter),
		baseChain(chainFilterOutput, nftables.ChainTypeFilter, nftables.ChainHookOutput, prioFilter),
		baseChain(chainNATPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		baseChain(chainNATOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest),
		baseChain(chainNATPostroute, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource),
	}
)

// skeleton is the table's static part: sets, base and helper chains and
// their rules, and the elements of the configuration's sets.
type skeleton struct {
	sets   []nft.Set
	chains []*nftables.Chain
	rules  map[string][][]expr.Any // by chain
	elems  map[string][]nftables.SetElement
}

// newSkeleton builds the static part for cfg.
func newSkeleton(cfg *Config) (*skeleton, error) {
	sk := &skeleton{rules: map[string][][]expr.Any{}, elems: map[string][]nftables.SetElement{}}
	sk.chains = append(append(sk.chains, baseChains...), regularChain(chainServices), regularChain(chainReject))
	add := func(chain string, rule ...[]expr.Any) {
		sk.rules[chain] = append(sk.rules[chain], exprs.Concat(rule...))
	}

	toServices := []expr.Any{exprs.Verdict(expr.VerdictJump, chainServices)}
	add(chainNATPrerouting, toServices)
	add(chainNATOutput, toServices)
	add(chainNATPostroute, takeMark(), []expr.Any{&expr.Masq{FullyRandom: true}})
	add(chainReject,
		[]expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, exprs.CmpEq(1, []byte{unix.IPPROTO_TCP}), &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})
	add(chainReject, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}})

	for i := range families {
		fam := &families[i]
		sk.sets = append(sk.sets, fam.sets()...)
		cidrs, err := nft.FamilyPrefixElements(cfg.ClusterCIDRs, fam.f == IPv4)
		if err != nil {
			return nil, fmt.Errorf("cluster CIDRs: %w", err)
		}
		sk.elems[fam.set(setClusterCIDRs)] = cidrs
		npa, err := nft.FamilyPrefixElements(cfg.NodePortAddresses, fam.f == IPv4)
		if err != nil {
			return nil, fmt.Errorf("node port addresses: %w", err)
		}
		sk.elems[fam.set(setNodePortIPs)] = npa

		// Node port traffic: to a local address (not loopback), within
		// the node port addresses when they are given.
		nodeAddr := exprs.Concat(exprs.FibLocal(false), fam.notLoopbackDst())
		if len(cfg.NodePortAddresses) > 0 {
			nodeAddr = append(nodeAddr, fam.daddr(1), exprs.Lookup(fam.set(setNodePortIPs), 1, false))
		}
		vmap := func(set string, nodePort bool) []expr.Any {
			if nodePort {
				return exprs.Concat(nodeAddr, exprs.ProtoPort(reg0), []expr.Any{exprs.LookupTo(fam.set(set), reg0, regV)})
			}
			return exprs.Concat(fam.addrProtoPort(), []expr.Any{exprs.LookupTo(fam.set(set), reg0, regV)})
		}
		if len(cidrs) > 0 {
			add(chainServices, fam.matchFamily(), []expr.Any{fam.saddr(1), exprs.Lookup(fam.set(setClusterCIDRs), 1, true)},
				fam.addrProtoPort(), []expr.Any{exprs.Lookup(fam.set(setClusterIPs), reg0, false)}, setMark())
		}
		add(chainServices, fam.matchFamily(), vmap(setServiceIPs, false))
		add(chainServices, fam.matchFamily(), vmap(setNodePorts, true))
		// Services without endpoints: checked where the packet's
		// destination is still the service's (rejects are allowed in
		// these hooks on every kernel), on new connections only.
		for _, ch := range []string{chainFilterInput, chainFilterForward, chainFilterOutput} {
			add(ch, ctStateNew(), fam.matchFamily(), vmap(setNoEndpoints, false))
		}
		add(chainFilterInput, ctStateNew(), fam.matchFamily(), vmap(setNoEndpointNodePorts, true))
		// loadBalancerSourceRanges: before DNAT, on traffic from
		// outside and the node's pods (prerouting) and from the node
		// (output, after the endpoint check: the firewall chain is a
		// goto, the chain's end), new connections only, as kube-proxy.
		for _, ch := range []string{chainFilterPrerouting, chainFilterOutput} {
			add(ch, ctStateNew(), fam.matchFamily(), vmap(setFirewallIPs, false))
		}
		for n := 1; n <= maxPick; n++ {
			name := fam.pickChain(n)
			sk.chains = append(sk.chains, regularChain(name))
			add(name, fam.pick(n))
		}
		// Hairpin: an endpoint reaching itself through its service.
		add(chainNATPostroute, fam.matchFamily(), exprs.CtBits(expr.CtKeySTATUS, ctStatusDNAT),
			[]expr.Any{fam.saddr(reg0), fam.daddr(reg0 + fam.words()), exprs.Lookup(fam.set(setHairpin), reg0, false), &expr.Masq{FullyRandom: true}})
	}
	return sk, nil
}

// ruleCount is the number of the skeleton's rules.
func (sk *skeleton) ruleCount() int {
	n := 0
	for _, rs := range sk.rules {
		n += len(rs)
	}
	return n
}

// elemCount is the number of the skeleton's set elements.
func (sk *skeleton) elemCount() int {
	n := 0
	for _, es := range sk.elems {
		n += len(es)
	}
	return n
}

// write queues the whole skeleton.
func (sk *skeleton) write(b *nft.Batch) {
	b.AddTable(table)
	for _, s := range sk.sets {
		b.AddSet(s)
		if es := sk.elems[s.Name]; len(es) > 0 {
			b.AddElements(s, es)
		}
	}
	for _, ch := range sk.chains {
		b.AddChain(ch)
	}
	for _, ch := range sk.chains {
		for _, r := range sk.rules[ch.Name] {
			b.AddRule(ch, r)
		}
	}
}
