package policy

import (
	"cmp"
	"net/netip"
	"slices"

	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Range is an interval of addresses of one family, both ends included.
type Range struct {
	From, To netip.Addr
}

// prefixRange returns the addresses of a masked prefix as a Range.
func prefixRange(p netip.Prefix) Range {
	last := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range last {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				last[i] |= 0x80 >> j
			}
		}
	}
	to, _ := netip.AddrFromSlice(last)
	return Range{From: p.Addr(), To: to}
}

// subtract returns r less the excepted prefixes (sorted), as sorted
// disjoint ranges.
func subtract(r Range, except []netip.Prefix) []Range {
	out := []Range{r}
	for _, e := range except {
		er := prefixRange(e)
		if er.From.Is4() != r.From.Is4() {
			continue
		}
		var next []Range
		for _, o := range out {
			if er.To.Less(o.From) || o.To.Less(er.From) {
				next = append(next, o)
				continue
			}
			if o.From.Less(er.From) {
				next = append(next, Range{From: o.From, To: er.From.Prev()})
			}
			if er.To.Less(o.To) {
				next = append(next, Range{From: er.To.Next(), To: o.To})
			}
		}
		out = next
	}
	return out
}

// mergeRanges sorts rs and merges those that overlap or touch, in place:
// the result shares rs's array.
func mergeRanges(rs []Range) []Range {
	slices.SortFunc(rs, func(a, b Range) int { return cmp.Or(a.From.Compare(b.From), a.To.Compare(b.To)) })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			next := last.To.Next()
			if last.To.Is4() == r.From.Is4() && (!next.IsValid() || !next.Less(r.From)) {
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

// containsAddr reports whether a is in one of rs.
func containsAddr(rs []Range, a netip.Addr) bool {
	for _, r := range rs {
		if r.From.Is4() == a.Is4() && !a.Less(r.From) && !r.To.Less(a) {
			return true
		}
	}
	return false
}

// mergePorts sorts ports and merges the ranges of a protocol that overlap
// or touch.
func mergePorts(ports []PortRange) []PortRange {
	slices.SortFunc(ports, func(a, b PortRange) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To))
	})
	var out []PortRange
	for _, p := range ports {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.Protocol == p.Protocol && int(p.From) <= int(last.To)+1 {
				last.To = max(last.To, p.To)
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

// accumulator gathers one direction of a pod over the policies selecting
// it.
type accumulator struct {
	policies        []string
	rules           []Rule
	admin, baseline []TierRule
}

// addTier adds the rules of a cluster policy of tier, after those of the
// policies taking precedence over it.
func (a *accumulator) addTier(tier npav1beta1.Tier, rules []TierRule) {
	if tier == npav1beta1.AdminTier {
		a.admin = append(a.admin, rules...)
	} else {
		a.baseline = append(a.baseline, rules...)
	}
}

// reachable returns rules up to the first that matches all traffic: the
// rest never decide.
func reachable(rules []TierRule) []TierRule {
	for i, r := range rules {
		if r.Peers == "" && r.Endpoints == "" && r.Ports == nil {
			return rules[:i+1]
		}
	}
	return rules
}

// isolate records that policy isolates the pod in this direction.
func (a *accumulator) isolate(policy string) {
	a.policies = append(a.policies, policy)
}

// add adds allowed rules.
func (a *accumulator) add(rules []Rule) {
	a.rules = append(a.rules, rules...)
}

// direction returns the Direction gathered: the cluster tiers' rules in
// precedence order up to the first matching all traffic, no baseline
// rules when NetworkPolicy isolates; NetworkPolicy rules of the same
// peers merged (every port when one of them has no ports), the rule
// allowing everything alone when there is one; address rules first, by
// set name, then endpoint rules, by set name.
func (a *accumulator) direction() Direction {
	d := Direction{Admin: reachable(a.admin)}
	if len(a.policies) == 0 {
		d.Baseline = reachable(a.baseline)
		return d
	}
	d.Isolated, d.Policies = true, slices.Clone(a.policies)
	slices.Sort(d.Policies)
	type peers struct{ addrs, endpoints string }
	merged := map[peers]*Rule{}
	var keys []peers
	for _, r := range a.rules {
		k := peers{r.Peers, r.Endpoints}
		m, ok := merged[k]
		if !ok {
			m = &Rule{Peers: r.Peers, Endpoints: r.Endpoints, Ports: slices.Clone(r.Ports)}
			merged[k] = m
			keys = append(keys, k)
			continue
		}
		if m.Ports == nil || r.Ports == nil {
			m.Ports = nil
			continue
		}
		m.Ports = append(m.Ports, r.Ports...)
	}
	if all, ok := merged[peers{}]; ok && all.Ports == nil {
		d.Rules = []Rule{{}}
		return d
	}
	for _, k := range keys {
		r := merged[k]
		if r.Ports != nil {
			r.Ports = mergePorts(r.Ports)
		}
		d.Rules = append(d.Rules, *r)
	}
	slices.SortFunc(d.Rules, func(a, b Rule) int {
		return cmp.Or(cmp.Compare(a.Endpoints, b.Endpoints), cmp.Compare(a.Peers, b.Peers))
	})
	return d
}
