package dataplane

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/nft/exprs"
	"github.com/podnet/podnet/internal/policy"
)

// state is what the table holds besides its fixed chains: the sets and
// maps with their elements, the chains made from the Model with their
// rules, and the deny counters.
type state struct {
	sets   map[string]*setState
	chains map[string][]ruleSpec
	// counters are the deny counters (and their chains), by name.
	counters map[string]Denied
}

type setState struct {
	set   nft.Set
	elems []nftables.SetElement
}

// ruleSpec is one rule of a chain made from the Model: a match on the
// peer's address (source for ingress, destination for egress) in a set,
// on destination address . protocol . port in an endpoint set, on
// protocol . port in a port set, any of them optional, and a verdict.
type ruleSpec struct {
	family    int  // index in families when the rule matches addresses
	src       bool // the peer is the source
	peers     string
	endpoints string
	ports     string
	verdict   expr.VerdictKind
	chain     string // for a goto
}

// planner computes the state of a Model.
type planner struct {
	cfg   *Config
	model *policy.Model
	st    *state
	addrs map[string]bool // AddrSet names of the Model
	eps   map[string]bool // EndpointSet names of the Model
}

// plan computes the state the table must hold for m.
func plan(cfg *Config, m *policy.Model) (*state, error) {
	sets, err := fixedSets(cfg)
	if err != nil {
		return nil, err
	}
	p := &planner{cfg: cfg, model: m, st: &state{sets: sets, chains: map[string][]ruleSpec{}, counters: map[string]Denied{}},
		addrs: map[string]bool{}, eps: map[string]bool{}}
	for _, s := range m.AddrSets {
		if err := p.addrSet(s); err != nil {
			return nil, err
		}
	}
	for _, s := range m.EndpointSets {
		if err := p.endpointSet(s); err != nil {
			return nil, err
		}
	}
	owner := map[netip.Addr]string{}
	seen := map[string]bool{}
	for i := range m.Pods {
		pod := &m.Pods[i]
		id := pod.Namespace + "/" + pod.Name
		if pod.Namespace == "" || pod.Name == "" {
			return nil, fmt.Errorf("pod %q: no namespace or name", id)
		}
		if seen[id] {
			return nil, fmt.Errorf("pod %s given twice", id)
		}
		seen[id] = true
		in, err := p.direction(id, true, &pod.Ingress)
		if err != nil {
			return nil, fmt.Errorf("pod %s: ingress: %w", id, err)
		}
		out, err := p.direction(id, false, &pod.Egress)
		if err != nil {
			return nil, fmt.Errorf("pod %s: egress: %w", id, err)
		}
		for _, a := range pod.IPs {
			if !a.IsValid() || a.Is4In6() {
				return nil, fmt.Errorf("pod %s: invalid address %v", id, a)
			}
			if o, ok := owner[a]; ok {
				return nil, fmt.Errorf("pod %s: address %v is also pod %s's", id, a, o)
			}
			owner[a] = id
			fam := familyOf(a)
			key := a.AsSlice()
			p.st.sets[mapIngress+fam.suffix].elems = append(p.st.sets[mapIngress+fam.suffix].elems, nftables.SetElement{Key: key, VerdictData: in})
			p.st.sets[mapEgress+fam.suffix].elems = append(p.st.sets[mapEgress+fam.suffix].elems, nftables.SetElement{Key: key, VerdictData: out})
		}
	}
	return p.st, nil
}

func familyOf(a netip.Addr) *family {
	if a.Is4() {
		return &families[0]
	}
	return &families[1]
}

// addrSet adds the two sets (one per family) of an AddrSet.
func (p *planner) addrSet(s policy.AddrSet) error {
	if s.Name == "" || len(s.Name) > maxName {
		return fmt.Errorf("address set %q: invalid name", s.Name)
	}
	if p.addrs[s.Name] {
		return fmt.Errorf("address set %s given twice", s.Name)
	}
	p.addrs[s.Name] = true
	ranges := slices.Clone(s.Ranges)
	for _, r := range ranges {
		if !r.From.IsValid() || !r.To.IsValid() || r.From.Is4() != r.To.Is4() || r.From.Is4In6() || r.To.Less(r.From) {
			return fmt.Errorf("address set %s (%s): invalid range %v-%v", s.Name, s.Key, r.From, r.To)
		}
	}
	var elems [2][]nftables.SetElement
	for _, r := range mergeRanges(ranges) {
		i := 1
		if r.From.Is4() {
			i = 0
		}
		elems[i] = append(elems[i], nftables.SetElement{Key: r.From.AsSlice()})
		if next := r.To.Next(); next.IsValid() {
			elems[i] = append(elems[i], nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
	}
	for i := range families {
		fam := &families[i]
		set := nft.Set{Table: table, Name: s.Name + suffixAddrs + fam.suffix, Key: []nftables.SetDatatype{fam.addrType}, Interval: true}
		p.st.sets[set.Name] = &setState{set: set, elems: elems[i]}
	}
	return nil
}

// mergeRanges sorts rs and merges those that overlap or touch: an
// interval set holds no such ranges.
func mergeRanges(rs []policy.Range) []policy.Range {
	slices.SortFunc(rs, func(a, b policy.Range) int { return cmp.Or(a.From.Compare(b.From), a.To.Compare(b.To)) })
	var out []policy.Range
	for _, r := range rs {
		if n := len(out); n > 0 && out[n-1].To.Is4() == r.From.Is4() {
			last := &out[n-1]
			if next := last.To.Next(); !next.IsValid() || !next.Less(r.From) {
				if last.To.Less(r.To) {
					last.To = r.To
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// endpointSet adds the two sets (one per family) of an EndpointSet.
func (p *planner) endpointSet(s policy.EndpointSet) error {
	if s.Name == "" || len(s.Name) > maxName {
		return fmt.Errorf("endpoint set %q: invalid name", s.Name)
	}
	if p.eps[s.Name] {
		return fmt.Errorf("endpoint set %s given twice", s.Name)
	}
	p.eps[s.Name] = true
	var elems [2][]nftables.SetElement
	for _, e := range s.Endpoints {
		if !e.Addr.IsValid() || e.Addr.Is4In6() || e.Protocol == 0 {
			return fmt.Errorf("endpoint set %s (%s): invalid endpoint %v %v/%d", s.Name, s.Key, e.Addr, e.Protocol, e.Port)
		}
		i := 1
		if e.Addr.Is4() {
			i = 0
		}
		key := append(e.Addr.AsSlice(), protoPortKey(e.Protocol, e.Port)...)
		elems[i] = append(elems[i], nftables.SetElement{Key: key})
	}
	for i := range families {
		fam := &families[i]
		set := nft.Set{Table: table, Name: s.Name + suffixEndpoints + fam.suffix,
			Key: []nftables.SetDatatype{fam.addrType, nftables.TypeInetProto, nftables.TypeInetService}}
		p.st.sets[set.Name] = &setState{set: set, elems: elems[i]}
	}
	return nil
}

// protoPortKey is protocol . port as a concatenated key holds them, each
// padded to 4 bytes.
func protoPortKey(proto policy.Protocol, port uint16) []byte {
	return append(binary.BigEndian.AppendUint16([]byte{byte(proto), 0, 0, 0}, port), 0, 0)
}

// portSet returns the name of the set of ports, adding it when it is
// new: sets are shared by every rule of the same ports.
func (p *planner) portSet(ports []policy.PortRange) (string, error) {
	ports = slices.Clone(ports)
	slices.SortFunc(ports, func(a, b policy.PortRange) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To))
	})
	ports = slices.Compact(ports)
	var key strings.Builder
	var elems []nftables.SetElement
	for _, r := range ports {
		if r.Protocol == 0 || r.To < r.From {
			return "", fmt.Errorf("invalid port range %v %d-%d", r.Protocol, r.From, r.To)
		}
		fmt.Fprintf(&key, "%d:%d-%d,", r.Protocol, r.From, r.To)
		elems = append(elems, nftables.SetElement{Key: protoPortKey(r.Protocol, r.From), KeyEnd: protoPortKey(r.Protocol, r.To)})
	}
	sum := sha256.Sum256([]byte(key.String()))
	name := prefixPorts + hex.EncodeToString(sum[:8])
	if _, ok := p.st.sets[name]; !ok {
		set := nft.Set{Table: table, Name: name, Key: []nftables.SetDatatype{nftables.TypeInetProto, nftables.TypeInetService}, Interval: true}
		p.st.sets[name] = &setState{set: set, elems: elems}
	}
	return name, nil
}

// direction adds the chains of one direction of pod id and returns the
// verdict its map holds for the pod's addresses.
func (p *planner) direction(id string, ingress bool, d *policy.Direction) (*expr.Verdict, error) {
	dir, prefix := "egress", prefixEgress
	accept := exprs.Verdict(expr.VerdictGoto, chainIngress) // egress accepted: on to the destination's ingress
	if ingress {
		dir, prefix = "ingress", prefixIngress
		accept = exprs.Verdict(expr.VerdictAccept, "")
	}
	if !d.Isolated && len(d.Admin) == 0 && len(d.Baseline) == 0 {
		return accept, nil
	}
	main := shorten(prefix, id)
	np := main
	if slices.ContainsFunc(d.Admin, func(r policy.TierRule) bool { return r.Action == policy.Pass }) {
		np = main + suffixPolicy
	}
	var rules []ruleSpec
	tier := func(name string, trs []policy.TierRule) error {
		for _, tr := range trs {
			var v *expr.Verdict
			switch tr.Action {
			case policy.Accept:
				v = accept
			case policy.Deny:
				v = exprs.Verdict(expr.VerdictGoto, p.deny(Denied{Tier: name, Policy: tr.Policy, Direction: dir}))
			case policy.Pass:
				// Pass ends the admin tier; in the baseline tier, whose
				// API has no Pass, it ends the tier too: traffic passes.
				v = accept
				if name == TierAdmin {
					v = exprs.Verdict(expr.VerdictGoto, np)
				}
			default:
				return fmt.Errorf("%s rule of %s: invalid action %v", name, tr.Policy, tr.Action)
			}
			specs, err := p.match(ingress, tr.Rule, v)
			if err != nil {
				return fmt.Errorf("%s rule of %s: %w", name, tr.Policy, err)
			}
			rules = append(rules, specs...)
		}
		return nil
	}
	if err := tier(TierAdmin, d.Admin); err != nil {
		return nil, err
	}
	if np != main {
		rules = append(rules, ruleSpec{family: -1, verdict: expr.VerdictGoto, chain: np})
		p.st.chains[main] = rules
		rules = nil
	}
	if d.Isolated {
		for _, r := range d.Rules {
			specs, err := p.match(ingress, r, accept)
			if err != nil {
				return nil, err
			}
			rules = append(rules, specs...)
		}
		deny := p.deny(Denied{Tier: TierNetworkPolicy, Policy: strings.Join(d.Policies, ","), Direction: dir})
		rules = append(rules, ruleSpec{family: -1, verdict: expr.VerdictGoto, chain: deny})
	} else {
		if err := tier(TierBaseline, d.Baseline); err != nil {
			return nil, err
		}
		rules = append(rules, ruleSpec{family: -1, verdict: accept.Kind, chain: accept.Chain})
	}
	p.st.chains[np] = rules
	return exprs.Verdict(expr.VerdictGoto, main), nil
}

// deny returns the name of the counter and chain that count, log and
// drop the packets k denies.
func (p *planner) deny(k Denied) string {
	name := shorten(prefixDeny, k.Tier+"/"+k.Direction+"/"+k.Policy)
	p.st.counters[name] = k
	return name
}

// match returns the rules matching r with verdict v: one per family
// when r names sets (a pod's rules change only with its policies, never
// with the members of its sets).
func (p *planner) match(ingress bool, r policy.Rule, v *expr.Verdict) ([]ruleSpec, error) {
	spec := ruleSpec{family: -1, src: ingress, verdict: v.Kind, chain: v.Chain}
	if len(r.Ports) > 0 {
		name, err := p.portSet(r.Ports)
		if err != nil {
			return nil, err
		}
		spec.ports = name
	}
	switch {
	case r.Endpoints != "":
		if !p.eps[r.Endpoints] {
			return nil, fmt.Errorf("unknown endpoint set %s", r.Endpoints)
		}
		if r.Peers != "" || len(r.Ports) > 0 {
			return nil, fmt.Errorf("endpoint set %s with peers or ports", r.Endpoints)
		}
	case r.Peers != "":
		if !p.addrs[r.Peers] {
			return nil, fmt.Errorf("unknown address set %s", r.Peers)
		}
	default:
		return []ruleSpec{spec}, nil
	}
	out := make([]ruleSpec, len(families))
	for i := range families {
		s := spec
		s.family = i
		if r.Endpoints != "" {
			s.endpoints = r.Endpoints + suffixEndpoints + families[i].suffix
		} else {
			s.peers = r.Peers + suffixAddrs + families[i].suffix
		}
		out[i] = s
	}
	return out, nil
}

// exprs renders the rule.
func (r *ruleSpec) exprs() []expr.Any {
	var out []expr.Any
	if r.family >= 0 {
		fam := &families[r.family]
		out = append(out, exprs.NFProto(fam.nfproto)...)
		if r.peers != "" {
			out = append(out, fam.addrIn(r.src, r.peers)...)
		}
		if r.endpoints != "" {
			out = append(out, fam.addr(r.src, reg0))
			out = append(out, exprs.ProtoPort(reg0+fam.words())...)
			out = append(out, exprs.Lookup(r.endpoints, reg0, false))
		}
	}
	if r.ports != "" {
		out = append(out, exprs.ProtoPort(reg0)...)
		out = append(out, exprs.Lookup(r.ports, reg0, false))
	}
	return append(out, exprs.Verdict(r.verdict, r.chain))
}

// denyRules are the rules of a deny chain: log (rate-limited, prefixed
// with logPrefix(k)) when the configuration asks for it, count and drop.
func (cfg *Config) denyRules(name string, k Denied) [][]expr.Any {
	var rules [][]expr.Any
	if cfg.LogGroup != 0 {
		rules = append(rules, []expr.Any{
			&expr.Limit{Type: expr.LimitTypePkts, Rate: logRate, Unit: expr.LimitTimeSecond, Burst: logBurst},
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: cfg.LogGroup, Data: []byte(logPrefix(k))},
		})
	}
	return append(rules, []expr.Any{
		&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: name},
		exprs.Verdict(expr.VerdictDrop, ""),
	})
}

// logPrefix is the prefix of the packets k denies in the log: "TIER
// DIRECTION POLICY" (the deny chain's key: the same policy may deny in
// both directions, and a pod-to-pod packet crosses the source's egress
// and the destination's ingress), cut to the kernel's length.
func logPrefix(k Denied) string {
	prefix := k.Tier + " " + k.Direction + " " + k.Policy
	if len(prefix) > maxLogPrefix {
		prefix = prefix[:maxLogPrefix]
	}
	return prefix
}

// Logging of denied packets: at most logRate a second per deny chain,
// bursts of logBurst; the kernel keeps 127 bytes of a log prefix.
const (
	logRate      = 10
	logBurst     = 5
	maxLogPrefix = 127
)
