package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/nft/exprs"
)

// The table's fixed sets and maps, per family (the name ends in 4 or 6).
const (
	// mapIngress and mapEgress map a local pod's address to its verdict
	// for the direction: a goto to the pod's chain, or the direction's
	// accept when nothing polices it.
	mapIngress = "ingress"
	mapEgress  = "egress"
	// setPodCIDRs holds Config.PodCIDRs: an address in them that no map
	// holds is dropped.
	setPodCIDRs = "pod-cidrs"
)

// The fixed chains.
const (
	chainForward = "forward"
	chainInput   = "input"
	// chainIngress dispatches by destination: the second half of the
	// forward path, reached once the source's egress accepted.
	chainIngress = "dispatch-ingress"
)

// Name prefixes of the chains and sets made from the Model.
const (
	prefixIngress = "ingress/"
	prefixEgress  = "egress/"
	prefixDeny    = "deny/"
	// suffixPolicy is the NetworkPolicy part of a pod's chain that an
	// admin Pass rule goes to.
	suffixPolicy = "/np"
	prefixPorts  = "ports-"
	// suffixAddrs marks an address set's name, before the family.
	suffixAddrs = "-"
	// suffixEndpoints marks an endpoint set's name, before the family.
	suffixEndpoints = "-ep"
)

// maxName bounds the names made from policy and pod names; longer ones
// are replaced by a hash (the kernel takes 255 bytes).
const maxName = 200

var table = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}

var acceptPolicy = nftables.ChainPolicyAccept

// The base chains. Both run after the service proxy's DNAT
// (prerouting, dstnat) and before masquerading (postrouting, srcnat):
// the forward and input hooks sit between the two whatever their
// priority. filter is the usual priority of filtering base chains.
var baseChains = []*nftables.Chain{
	{Name: chainForward, Table: table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &acceptPolicy},
	{Name: chainInput, Table: table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &acceptPolicy},
}

func regularChain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: table}
}

// shorten returns name, or a hash of it under prefix when it is too long
// for the kernel.
func shorten(prefix, name string) string {
	if len(prefix)+len(name) <= maxName {
		return prefix + name
	}
	sum := sha256.Sum256([]byte(name))
	return prefix + "#" + hex.EncodeToString(sum[:12])
}

// fixedSets returns the table's fixed sets and maps with the elements of
// the configuration's.
func fixedSets(cfg *Config) (map[string]*setState, error) {
	sets := map[string]*setState{}
	for i := range families {
		fam := &families[i]
		for _, m := range []string{mapIngress, mapEgress} {
			s := nft.Set{Table: table, Name: m + fam.suffix, Key: []nftables.SetDatatype{fam.addrType}, Data: nftables.TypeVerdict}
			sets[s.Name] = &setState{set: s}
		}
		cidrs, err := nft.FamilyPrefixElements(cfg.PodCIDRs, fam.addrLen == 4)
		if err != nil {
			return nil, fmt.Errorf("pod CIDRs: %w", err)
		}
		s := nft.Set{Table: table, Name: setPodCIDRs + fam.suffix, Key: []nftables.SetDatatype{fam.addrType}, Interval: true}
		sets[s.Name] = &setState{set: s, elems: cidrs}
	}
	return sets, nil
}

// fixedRules are the rules of the fixed chains, by chain.
//
// forward: established and related traffic passes; the source's egress
// map leads to its egress chain, which ends by going to dispatch-ingress
// when it accepts (or straight there for a pod no egress policy
// concerns); a source in the pod CIDRs that is no pod is dropped; any
// other source goes to dispatch-ingress.
//
// input (a packet to the node itself): as forward, the node's own
// traffic over loopback and IPv6 neighbour discovery (a pod resolving its
// gateway, from its own address, or answering the node) excepted;
// dispatch-ingress then accepts it, its destination being local.
//
// dispatch-ingress: the destination's ingress map leads to its ingress
// chain (or accepts); a local address passes; a destination in the pod
// CIDRs that is no pod is dropped; anything else passes.
func fixedRules() map[string][][]expr.Any {
	rules := map[string][][]expr.Any{}
	add := func(chain string, r ...[]expr.Any) { rules[chain] = append(rules[chain], exprs.Concat(r...)) }
	established := exprs.CtBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	for _, ch := range []string{chainForward, chainInput} {
		add(ch, established, accept)
		if ch == chainInput {
			add(ch, fromLoopback(), accept)
			add(ch, neighbourDiscovery(), accept)
		}
		for i := range families {
			fam := &families[i]
			add(ch, exprs.NFProto(fam.nfproto), fam.addrVmap(true, mapEgress+fam.suffix))
		}
		for i := range families {
			fam := &families[i]
			add(ch, exprs.NFProto(fam.nfproto), fam.addrIn(true, setPodCIDRs+fam.suffix), drop)
		}
		add(ch, []expr.Any{exprs.Verdict(expr.VerdictGoto, chainIngress)})
	}
	for i := range families {
		fam := &families[i]
		add(chainIngress, exprs.NFProto(fam.nfproto), fam.addrVmap(false, mapIngress+fam.suffix))
	}
	add(chainIngress, exprs.FibLocal(false), accept)
	for i := range families {
		fam := &families[i]
		add(chainIngress, exprs.NFProto(fam.nfproto), fam.addrIn(false, setPodCIDRs+fam.suffix), drop)
	}
	return rules
}

// fixedChains are the fixed chains, those rules go to created first.
var fixedChains = append([]*nftables.Chain{regularChain(chainIngress)}, baseChains...)
