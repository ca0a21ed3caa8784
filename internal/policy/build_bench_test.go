package policy

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// benchScale is the size of a synthetic cluster.
type benchScale struct {
	pods, namespaces, nodes int
	policies                int // NetworkPolicies
	clusterPolicies         int // ClusterNetworkPolicies, admin and baseline
}

// benchNode is the node whose model the benchmarks build.
const benchNode = "n0"

// benchInput is a synthetic cluster of s's size:
//   - namespaces ns0… labelled with their name (as the API server does),
//     a team (t0…t9) and an env (prod, staging, dev);
//   - pods spread evenly over the namespaces, ten apps (a0…a9) a
//     namespace, a tier label (web, api, db) by app, dual stack, on nodes
//     drawn at random (benchNode has pods/nodes of them), with the named
//     ports http (TCP 8080) and metrics (TCP 9090), and dns (UDP 53) in
//     ns0's app a0;
//   - NetworkPolicies, five in a namespace, one of each kind in turn:
//     default deny both ways allowing DNS (namespace and pod selectors
//     together), an app's ingress from the next app (a port) and from a
//     team's namespaces (a named port), an app's egress to a prod app
//     (both selectors, a named port) and to the internet (an ipBlock with an except), a
//     tier's ingress from an ipBlock (a port range) and from staging, and
//     every pod of the namespace from the namespace and from the
//     monitoring namespace (a named port);
//   - ClusterNetworkPolicies of five kinds in turn: admin Deny dev to
//     prod, admin Pass of monitoring, admin Accept of DNS, baseline Deny
//     of other namespaces, baseline Deny of a network.
func benchInput(s benchScale) Input {
	var in Input
	envs := []string{"prod", "staging", "dev"}
	tiers := []string{"web", "api", "db"}
	for i := range s.namespaces {
		name := fmt.Sprint("ns", i)
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/metadata.name": name, "team": fmt.Sprint("t", i%10), "env": envs[i%3],
		}}})
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range s.pods {
		ns, app := i%s.namespaces, (i/s.namespaces)%10
		ports := []string{"http/TCP/8080", "metrics/TCP/9090"}
		if ns == 0 && app == 0 {
			ports = append(ports, "dns/UDP/53")
		}
		p := pod(fmt.Sprintf("ns%d/p%d", ns, i), fmt.Sprint("n", r.IntN(s.nodes)), fmt.Sprint("a", app),
			[]string{fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255), fmt.Sprintf("fd00::%x", i)}, ports...)
		p.Labels["tier"] = tiers[app%3]
		in.Pods = append(in.Pods, p)
	}
	both := func(nsKV, podKV []string) networkingv1.NetworkPolicyPeer {
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(nsKV...), PodSelector: sel(podKV...)}
	}
	dns := both(kv("kubernetes.io/metadata.name", "ns0"), kv("app", "a0"))
	for i := range s.policies {
		ns := (i / 5) % s.namespaces
		app := (i/5 + i) % 10
		a := func(n int) string { return fmt.Sprint("a", (app+n)%10) }
		name := fmt.Sprintf("ns%d/np%d", ns, i)
		var spec networkingv1.NetworkPolicySpec
		switch i % 5 {
		case 0:
			spec = networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				Egress:      []networkingv1.NetworkPolicyEgressRule{egress(peers(dns), port("UDP", 53, 0), port("TCP", 53, 0))},
			}
		case 1:
			spec = networkingv1.NetworkPolicySpec{PodSelector: *sel("app", a(0)), Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(peers(podPeer("app", a(1))), port("", 8080, 0)),
				ingress(peers(nsPeer("team", fmt.Sprint("t", i%10))), port("", "http", 0)),
			}}
		case 2:
			spec = networkingv1.NetworkPolicySpec{
				PodSelector: *sel("app", a(0)),
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{
					egress(peers(both(kv("env", "prod"), kv("app", a(2)))), port("", "http", 0)),
					egress(peers(blockPeer("0.0.0.0/0", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")), port("", 443, 0)),
				},
			}
		case 3:
			spec = networkingv1.NetworkPolicySpec{PodSelector: *sel("tier", tiers[app%3]), Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(peers(blockPeer("192.168.0.0/16", "192.168.1.0/24")), port("TCP", 30000, 32767)),
				ingress(peers(nsPeer("env", "staging"))),
			}}
		case 4:
			spec = networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(peers(podPeer())),
				ingress(peers(nsPeer("kubernetes.io/metadata.name", "ns1")), port("", "metrics", 0)),
			}}
		}
		in.Policies = append(in.Policies, policy(name, spec))
	}
	for i := range s.clusterPolicies {
		name := fmt.Sprint("cnp", i)
		var p *npav1beta1.ClusterNetworkPolicy
		switch i % 5 {
		case 0:
			p = cnp(name, admin, int32(i), subjectNS("env", "prod"), from(deny, cpeers(nsCPeer("env", "dev"))))
		case 1:
			p = cnp(name, admin, int32(i), subjectNS(), from(pass, cpeers(nsCPeer("kubernetes.io/metadata.name", "ns1")), proto("metrics")))
		case 2:
			p = cnp(name, admin, int32(i), subjectNS(),
				to(accept, cpeers(podsCPeer(kv("kubernetes.io/metadata.name", "ns0"), kv("app", "a0"))), proto("UDP/53"), proto("TCP/53")))
		case 3:
			p = cnp(name, baseline, int32(i), subjectPods(kv("team", fmt.Sprint("t", i%10)), nil), from(deny, cpeers(nsCPeer("team", fmt.Sprint("t", (i+1)%10)))))
		case 4:
			p = cnp(name, baseline, int32(i), subjectNS(), to(deny, cpeers(netCPeer("192.168.0.0/16", "172.16.0.0/12")), proto("TCP/22")))
		}
		in.ClusterPolicies = append(in.ClusterPolicies, p)
	}
	return in
}

// BenchmarkBuild builds benchNode's model, as the enforce controller does
// on every coalesced event, at cluster scales; it reports the model's
// local pods and sets, and the process's CPU time per build (user and
// system, the garbage collector's included), which a shared machine's
// load inflates less than ns/op, the wall time.
func BenchmarkBuild(b *testing.B) {
	for _, s := range []benchScale{
		{pods: 1000, namespaces: 10, nodes: 10, policies: 1000, clusterPolicies: 5},
		{pods: 1000, namespaces: 10, nodes: 10, clusterPolicies: 100},
		{pods: 10000, namespaces: 100, nodes: 100, policies: 100, clusterPolicies: 5},
		{pods: 10000, namespaces: 100, nodes: 100, policies: 1000, clusterPolicies: 5},
	} {
		name := fmt.Sprintf("pods=%d/namespaces=%d/nodes=%d/policies=%d/cluster=%d", s.pods, s.namespaces, s.nodes, s.policies, s.clusterPolicies)
		b.Run(name, func(b *testing.B) {
			in := benchInput(s)
			var m *Model
			cpu := processCPU(b)
			for b.Loop() {
				var err error
				if m, err = Build(benchNode, in); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU(b)-cpu)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(len(m.Pods)), "localpods")
			b.ReportMetric(float64(len(m.AddrSets)+len(m.EndpointSets)), "sets")
		})
	}
}

// processCPU is the CPU time the process has used, user and system.
func processCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
