package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/policy"
	"github.com/podnet/podnet/internal/testing/poll"
)

// modelPod is p as a Model pod of namespace ns, no policy concerning it.
func modelPod(p *pod) policy.Pod {
	return policy.Pod{Namespace: "ns", Name: p.name, IPs: []netip.Addr{p.ip4, p.ip6}}
}

// podSet is the AddrSet of the pods' addresses.
func podSet(name string, pods ...*pod) policy.AddrSet {
	var rs []policy.Range
	for _, p := range pods {
		rs = append(rs, policy.Range{From: p.ip4, To: p.ip4}, policy.Range{From: p.ip6, To: p.ip6})
	}
	slices.SortFunc(rs, func(a, b policy.Range) int { return a.From.Compare(b.From) })
	return policy.AddrSet{Name: name, Key: "pods " + name, Ranges: rs}
}

func isolated(policies string, rules ...policy.Rule) policy.Direction {
	return policy.Direction{Isolated: true, Policies: []string{policies}, Rules: rules}
}

func tcp(from, to uint16) policy.PortRange {
	return policy.PortRange{Protocol: policy.TCP, From: from, To: to}
}

func TestTraffic(t *testing.T) {
	l := newLab(t, 4)
	p1, p2, p3, p4 := l.pods[0], l.pods[1], l.pods[2], l.pods[3]
	node := &pod{name: "node", ns: l.node, ip4: l.nodeIP}
	node.serve(t)
	tb, err := New(Config{NetNSFd: l.node.Fd(), PodCIDRs: podCIDRs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })

	a := func(p *pod, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.ip4, port) }
	a6 := func(p *pod, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.ip6, port) }
	allow := func(from *pod, to netip.AddrPort) probe { return probe{from: from, to: to, allow: true} }
	deny := func(from *pod, to netip.AddrPort) probe { return probe{from: from, to: to} }
	udp := func(pr probe) probe { pr.udp = true; return pr }

	setP1 := podSet("set-p1", p1)
	// ipBlock 10.244.1.0/24 except pod3's address, and the IPv6 pod CIDR.
	block := policy.AddrSet{Name: "set-block", Key: "ipBlock", Ranges: []policy.Range{
		{From: netip.MustParseAddr("10.244.1.0"), To: p3.ip4.Prev()},
		{From: p3.ip4.Next(), To: netip.MustParseAddr("10.244.1.255")},
		{From: netip.MustParseAddr("fd00:244:1::"), To: netip.MustParseAddr("fd00:244:1:ffff:ffff:ffff:ffff:ffff")},
	}}
	ep := policy.EndpointSet{Name: "eps-p2-b", Key: "p2 port b", Endpoints: []policy.Endpoint{
		{Addr: p2.ip4, Protocol: policy.TCP, Port: portB}, {Addr: p2.ip6, Protocol: policy.TCP, Port: portB},
	}}
	// model returns the Model of pods 1-3 with p2's ingress and p1's
	// egress as given.
	model := func(in2, out1 policy.Direction, sets ...policy.AddrSet) *policy.Model {
		m := &policy.Model{Pods: []policy.Pod{modelPod(p1), modelPod(p2), modelPod(p3)}, AddrSets: sets}
		m.Pods[1].Ingress, m.Pods[0].Egress = in2, out1
		return m
	}
	steps := []struct {
		name   string
		model  *policy.Model
		setup  func(t *testing.T)
		probes []probe
	}{
		{"no policy: all pass, unknown addresses in the pod CIDRs dropped both ways", model(policy.Direction{}, policy.Direction{}), nil, []probe{
			allow(p1, a(p2, portA)), allow(p2, a6(p3, portB)), udp(allow(p3, a(p1, portUDP))),
			allow(l.client, a(p1, portA)), allow(p1, a(l.client, portA)), allow(p1, a(node, portA)), allow(p1, netip.AddrPortFrom(p1.gw4, portA)), allow(p2, netip.AddrPortFrom(p3.gw4, portB)),
			deny(p4, a(p1, portA)), deny(p1, a(p4, portA)), deny(l.client, a(p4, portA)), udp(deny(p4, a6(p2, portUDP))),
			allow(node, a(p4, portA)),
		}},
		{"default deny ingress", model(isolated("ns/deny"), policy.Direction{}), nil, []probe{
			deny(p1, a(p2, portA)), udp(deny(p1, a(p2, portUDP))), deny(p3, a6(p2, portB)), deny(l.client, a(p2, portA)),
			allow(p2, a(p1, portA)), allow(p2, a(l.client, portA)),
			allow(node, a(p2, portA)), allow(node, a6(p2, portB)),
		}},
		{"allow a pod set on one port", model(isolated("ns/allow", policy.Rule{Peers: setP1.Name, Ports: []policy.PortRange{tcp(portA, portA)}}), policy.Direction{}, setP1), nil, []probe{
			allow(p1, a(p2, portA)), allow(p1, a6(p2, portA)), deny(p1, a(p2, portB)), udp(deny(p1, a(p2, portUDP))),
			deny(p3, a(p2, portA)),
		}},
		{"ipBlock except, port ranges of two protocols", model(isolated("ns/block", policy.Rule{Peers: block.Name, Ports: []policy.PortRange{
			tcp(9000, 9999), {Protocol: policy.UDP, From: portUDP, To: portUDP}}}), policy.Direction{}, block), nil, []probe{
			allow(p1, a(p2, portB)), deny(p1, a(p2, portA)), udp(allow(p1, a(p2, portUDP))),
			deny(p3, a(p2, portB)), udp(deny(p3, a(p2, portUDP))), allow(p3, a6(p2, portB)),
			deny(l.client, a(p2, portB)),
		}},
		{"default deny egress: pods, the node, the outside; the node still reaches the pod", model(policy.Direction{}, isolated("ns/egress")), nil, []probe{
			deny(p1, a(p2, portA)), deny(p1, a(node, portA)), deny(p1, a(l.client, portA)), udp(deny(p1, a6(p3, portUDP))),
			allow(node, a(p1, portA)), allow(p2, a(p1, portA)), allow(l.client, a(p1, portA)),
		}},
		{"an egress-isolated pod still resolves neighbours over IPv6", model(policy.Direction{}, isolated("ns/p2", policy.Rule{Peers: podSet("set-p2", p2).Name}), podSet("set-p2", p2)),
			func(t *testing.T) { forgetNeighbours(t, p1.ns, l.node) },
			[]probe{allow(p1, a6(p2, portA)), deny(p1, a6(p3, portA)), allow(node, a6(p1, portA))}},
		{"egress to a named port's endpoints", func() *policy.Model {
			m := model(policy.Direction{}, isolated("ns/named", policy.Rule{Endpoints: ep.Name}))
			m.EndpointSets = []policy.EndpointSet{ep}
			return m
		}(), nil, []probe{
			allow(p1, a(p2, portB)), allow(p1, a6(p2, portB)), deny(p1, a(p2, portA)), deny(p1, a(p3, portB)),
		}},
		{"egress and ingress must both accept", model(isolated("ns/deny"), isolated("ns/all", policy.Rule{})), nil, []probe{
			deny(p1, a(p2, portA)), allow(p1, a(p3, portA)),
		}},
		{"admin Deny before an allowing NetworkPolicy", func() *policy.Model {
			d := isolated("ns/all", policy.Rule{})
			d.Admin = []policy.TierRule{{Policy: "block-p1", Action: policy.Deny, Rule: policy.Rule{Peers: setP1.Name}}}
			return model(d, policy.Direction{}, setP1)
		}(), nil, []probe{deny(p1, a(p2, portA)), allow(p3, a(p2, portA))}},
		{"admin Pass hands over to NetworkPolicy", func() *policy.Model {
			d := isolated("ns/p1", policy.Rule{Peers: setP1.Name})
			d.Admin = []policy.TierRule{
				{Policy: "pass-p1", Action: policy.Pass, Rule: policy.Rule{Peers: setP1.Name}},
				{Policy: "deny-all", Action: policy.Deny},
			}
			return model(d, policy.Direction{}, setP1)
		}(), nil, []probe{allow(p1, a(p2, portA)), deny(p3, a(p2, portA)), allow(node, a(p2, portA))}},
		{"admin Accept before a denying NetworkPolicy", func() *policy.Model {
			d := isolated("ns/deny")
			d.Admin = []policy.TierRule{{Policy: "accept-p1", Action: policy.Accept, Rule: policy.Rule{Peers: setP1.Name, Ports: []policy.PortRange{tcp(portA, portA)}}}}
			return model(d, policy.Direction{}, setP1)
		}(), nil, []probe{allow(p1, a(p2, portA)), deny(p1, a(p2, portB)), deny(p3, a(p2, portA))}},
		{"baseline decides for a pod no NetworkPolicy isolates", func() *policy.Model {
			d := policy.Direction{Baseline: []policy.TierRule{{Policy: "base", Action: policy.Deny, Rule: policy.Rule{Peers: setP1.Name}}}}
			return model(d, policy.Direction{}, setP1)
		}(), nil, []probe{deny(p1, a(p2, portA)), allow(p3, a(p2, portA))}},
		{"baseline ignored for an isolated pod", func() *policy.Model {
			d := isolated("ns/p1", policy.Rule{Peers: setP1.Name})
			d.Baseline = []policy.TierRule{{Policy: "base", Action: policy.Deny, Rule: policy.Rule{Peers: setP1.Name}}}
			return model(d, policy.Direction{}, setP1)
		}(), nil, []probe{allow(p1, a(p2, portA)), deny(p3, a(p2, portA))}},
		{"a pod added to the Model and to a set passes", func() *policy.Model {
			set := podSet(setP1.Name, p1, p4)
			m := model(isolated("ns/allow", policy.Rule{Peers: set.Name}), policy.Direction{}, set)
			m.Pods = append(m.Pods, modelPod(p4))
			return m
		}(), nil, []probe{allow(p4, a(p2, portA)), allow(p1, a(p4, portA)), allow(p4, a6(p3, portA)), deny(p3, a(p2, portA))}},
	}
	// The keys whose counters count the denied probes of a step.
	denied := map[string][]Denied{
		"default deny egress: pods, the node, the outside; the node still reaches the pod": {{Tier: TierNetworkPolicy, Policy: "ns/egress", Direction: "egress"}},
		"admin Deny before an allowing NetworkPolicy":                                      {{Tier: TierAdmin, Policy: "block-p1", Direction: "ingress"}},
		"baseline decides for a pod no NetworkPolicy isolates":                             {{Tier: TierBaseline, Policy: "base", Direction: "ingress"}},
	}
	for i, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			st, err := tb.Sync(step.model)
			if err != nil {
				t.Fatal(err)
			}
			if st.Full != (i == 0) {
				t.Errorf("Full = %v", st.Full)
			}
			t.Logf("%+v", st)
			if step.setup != nil {
				step.setup(t)
			}
			check(t, step.probes)
			for _, want := range denied[step.name] {
				poll.Until(t, 5*time.Second, fmt.Sprintf("denied packets counted under %+v", want), func() bool {
					got, err := tb.Denied()
					if err != nil {
						t.Fatal(err)
					}
					return slices.ContainsFunc(got, func(d Denied) bool {
						return d.Packets > 0 && d.Tier == want.Tier && d.Policy == want.Policy && d.Direction == want.Direction
					})
				})
			}
		})
	}
}
