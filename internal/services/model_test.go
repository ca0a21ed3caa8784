package services

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/services/dataplane"
)

// The tests' node, in zone a.
var testNode = Node{Name: "n1", Zone: "a"}

// svc is a Service "ns/web" of type ClusterIP with the cluster IPs and
// ports, changed by the mutators.
func svc(clusterIPs []string, ports []corev1.ServicePort, mutate ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIPs: clusterIPs, Ports: slices.Clone(ports)},
	}
	if len(clusterIPs) > 0 {
		s.Spec.ClusterIP = clusterIPs[0]
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

func port(name string, proto corev1.Protocol, p, nodePort int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: p, NodePort: nodePort}
}

var http80 = []corev1.ServicePort{port("http", corev1.ProtocolTCP, 80, 0)}

// ep is a slice endpoint; conds are "ready", "notready", "serving",
// "notserving", "terminating"; node "" is none.
func ep(addr, node string, conds ...string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}}
	if node != "" {
		e.NodeName = &node
	}
	t, f := true, false
	for _, c := range conds {
		switch c {
		case "ready":
			e.Conditions.Ready = &t
		case "notready":
			e.Conditions.Ready = &f
		case "serving":
			e.Conditions.Serving = &t
		case "notserving":
			e.Conditions.Serving = &f
		case "terminating":
			e.Conditions.Terminating = &t
		}
	}
	return e
}

// hinted is e hinted for zones.
func hinted(e discoveryv1.Endpoint, zones ...string) discoveryv1.Endpoint {
	e.Hints = &discoveryv1.EndpointHints{}
	for _, z := range zones {
		e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: z})
	}
	return e
}

// nodeHinted is e hinted for nodes (trafficDistribution PreferSameNode);
// e may carry zone hints already.
func nodeHinted(e discoveryv1.Endpoint, nodes ...string) discoveryv1.Endpoint {
	h := discoveryv1.EndpointHints{}
	if e.Hints != nil {
		h = *e.Hints
	}
	for _, n := range nodes {
		h.ForNodes = append(h.ForNodes, discoveryv1.ForNode{Name: n})
	}
	e.Hints = &h
	return e
}

// slice is an EndpointSlice of ns/web.
func slice(name string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: at, Ports: ports, Endpoints: eps,
	}
}

func sport(name string, proto corev1.Protocol, p int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &p}
}

var http8080 = []discoveryv1.EndpointPort{sport("http", corev1.ProtocolTCP, 8080)}

func eps(port uint16, addrs ...string) []dataplane.Endpoint {
	var out []dataplane.Endpoint
	for _, a := range addrs {
		out = append(out, dataplane.Endpoint{Addr: netip.MustParseAddr(a), Port: port})
	}
	return out
}

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// web is the dataplane service of ns/web's port http/TCP in v4 at
// 10.96.0.10:80, changed by the mutators. Its Cluster endpoints are the
// Internal ones (internalTrafficPolicy Cluster) unless a mutator sets
// them.
func web(mutate ...func(*dataplane.Service)) dataplane.Service {
	s := dataplane.Service{
		Namespace: "ns", Name: "web", PortName: "http", Protocol: dataplane.TCP, Family: dataplane.IPv4,
		ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80,
	}
	for _, m := range mutate {
		m(&s)
	}
	if s.Cluster == nil {
		s.Cluster = s.Internal
	}
	return s
}

func TestBuild(t *testing.T) {
	v4 := []string{"10.96.0.10"}
	itpLocal, etpLocal := corev1.ServiceInternalTrafficPolicyLocal, corev1.ServiceExternalTrafficPolicyLocal
	proxyMode, vipMode := corev1.LoadBalancerIPModeProxy, corev1.LoadBalancerIPModeVIP
	timeout := int32(60)
	three := slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
		ep("10.244.1.2", "n1"), ep("10.244.2.2", "n2"), ep("10.244.3.2", "n3"))
	nodePort := func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	}
	lbLocal := func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalTrafficPolicy = etpLocal
		s.Spec.HealthCheckNodePort = 32000
	}
	tests := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   Result
	}{
		{
			name: "ClusterIP: every ready endpoint, the slice port of the service port's name",
			svc:  svc(v4, http80), slices: []*discoveryv1.EndpointSlice{three},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2", "10.244.2.2", "10.244.3.2")
			})}, Endpoints: 3, LocalReady: 1},
		},
		{
			name: "no endpoints: the service is still programmed, empty (it rejects)",
			svc:  svc(v4, http80),
			want: Result{Ports: []dataplane.Service{web()}},
		},
		{name: "ExternalName skipped", svc: svc(nil, http80, func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }), slices: []*discoveryv1.EndpointSlice{three}},
		{name: "headless skipped", svc: svc([]string{"None"}, http80), slices: []*discoveryv1.EndpointSlice{three}},
		{name: "no cluster IP skipped", svc: svc(nil, http80)},
		{
			name: "another proxy's service skipped",
			svc: svc(v4, http80, func(s *corev1.Service) {
				s.Labels = map[string]string{LabelServiceProxyName: "other"}
			}),
			slices: []*discoveryv1.EndpointSlice{three},
		},
		{
			name: "ports matched by name and protocol; unnamed port; UDP and SCTP",
			svc: svc(v4, []corev1.ServicePort{
				port("", corev1.ProtocolUDP, 53, 0), port("m", corev1.ProtocolSCTP, 9000, 0), port("x", corev1.ProtocolTCP, 1, 0),
			}),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{
				sport("", corev1.ProtocolUDP, 5353), sport("m", corev1.ProtocolSCTP, 9001), sport("x", corev1.ProtocolUDP, 2),
			}, ep("10.244.1.2", "n2"))},
			want: Result{Ports: []dataplane.Service{
				web(func(s *dataplane.Service) {
					s.PortName, s.Protocol, s.Port, s.Internal = "", dataplane.UDP, 53, eps(5353, "10.244.1.2")
				}),
				web(func(s *dataplane.Service) {
					s.PortName, s.Protocol, s.Port, s.Internal = "m", dataplane.SCTP, 9000, eps(9001, "10.244.1.2")
				}),
				web(func(s *dataplane.Service) { s.PortName, s.Port = "x", 1 }),
			}, Endpoints: 1},
		},
		{
			name: "dual-stack: one service per family, endpoints from the slices of its address type; FQDN slices and wrong-family addresses ignored",
			svc:  svc([]string{"10.96.0.10", "fd00:96::10"}, http80),
			slices: []*discoveryv1.EndpointSlice{
				slice("web-4", discoveryv1.AddressTypeIPv4, http8080, ep("10.244.1.2", "n2"), ep("fd00:244::9", "n2")),
				slice("web-6", discoveryv1.AddressTypeIPv6, http8080, ep("fd00:244::2", "n2")),
				slice("web-f", discoveryv1.AddressTypeFQDN, http8080, ep("example.com", "n2")),
			},
			want: Result{Ports: []dataplane.Service{
				web(func(s *dataplane.Service) { s.Internal = eps(8080, "10.244.1.2") }),
				web(func(s *dataplane.Service) {
					s.Family, s.ClusterIP, s.Internal = dataplane.IPv6, netip.MustParseAddr("fd00:96::10"), eps(8080, "fd00:244::2")
				}),
			}, Endpoints: 2},
		},
		{
			name: "slices of a service merged, duplicates once",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{
				slice("web-2", discoveryv1.AddressTypeIPv4, http8080, ep("10.244.2.2", "n2"), ep("10.244.1.2", "n2")),
				slice("web-1", discoveryv1.AddressTypeIPv4, http8080, ep("10.244.1.2", "n2"), ep("10.244.3.2", "n3")),
			},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2", "10.244.2.2", "10.244.3.2")
			})}, Endpoints: 3},
		},
		{
			name: "conditions: ready (nil is ready) only, while one is",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				ep("10.244.1.2", "n2", "ready"), ep("10.244.1.3", "n2"), ep("10.244.1.4", "n2", "notready"),
				ep("10.244.1.5", "n2", "notready", "serving", "terminating"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2", "10.244.1.3")
			})}, Endpoints: 2},
		},
		{
			name: "conditions: none ready, the serving terminating ones",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				ep("10.244.1.4", "n2", "notready"),
				ep("10.244.1.5", "n2", "notready", "serving", "terminating"),
				ep("10.244.1.6", "n2", "notready", "notserving", "terminating"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.5")
			})}, Endpoints: 1},
		},
		{
			name:   "internalTrafficPolicy Local: the node's own endpoints",
			svc:    svc(v4, http80, func(s *corev1.Service) { s.Spec.InternalTrafficPolicy = &itpLocal }),
			slices: []*discoveryv1.EndpointSlice{three},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2")
				s.Cluster = eps(8080, "10.244.1.2", "10.244.2.2", "10.244.3.2")
			})}, Endpoints: 1, LocalReady: 1},
		},
		{
			name: "internalTrafficPolicy Local, endpoints only on other nodes: none internal (dropped), the cluster's known",
			svc:  svc(v4, http80, func(s *corev1.Service) { s.Spec.InternalTrafficPolicy = &itpLocal }),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				ep("10.244.2.2", "n2"), ep("10.244.3.2", "n3"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Cluster = eps(8080, "10.244.2.2", "10.244.3.2")
			})}},
		},
		{
			name: "both policies Local, NodePort, endpoints only on other nodes: external traffic dropped, the short-circuit to the cluster's",
			svc: svc(v4, http80, nodePort, func(s *corev1.Service) {
				s.Spec.InternalTrafficPolicy = &itpLocal
				s.Spec.ExternalTrafficPolicy = etpLocal
			}),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				ep("10.244.2.2", "n2"), ep("10.244.3.2", "n3"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.NodePort, s.ExternalLocal = 30080, true
				s.Cluster = eps(8080, "10.244.2.2", "10.244.3.2")
			})}, Endpoints: 2},
		},
		{
			name: "internalTrafficPolicy Local, no local ready endpoint: the local serving terminating one",
			svc:  svc(v4, http80, func(s *corev1.Service) { s.Spec.InternalTrafficPolicy = &itpLocal }),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				ep("10.244.1.2", "n1", "notready", "serving", "terminating"), ep("10.244.2.2", "n2"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2")
				s.Cluster = eps(8080, "10.244.2.2")
			})}, Endpoints: 1},
		},
		{
			name: "NodePort, externalTrafficPolicy Cluster: external traffic to every endpoint",
			svc:  svc(v4, http80, nodePort), slices: []*discoveryv1.EndpointSlice{three},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.NodePort = 30080
				s.Internal = eps(8080, "10.244.1.2", "10.244.2.2", "10.244.3.2")
				s.External = s.Internal
			})}, Endpoints: 3, LocalReady: 1},
		},
		{
			name: "NodePort, externalTrafficPolicy Local: external traffic to the local endpoints; no health check",
			svc: svc(v4, http80, nodePort, func(s *corev1.Service) {
				s.Spec.ExternalTrafficPolicy = etpLocal
				s.Spec.HealthCheckNodePort = 32000
			}),
			slices: []*discoveryv1.EndpointSlice{three},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.NodePort, s.ExternalLocal = 30080, true
				s.Internal = eps(8080, "10.244.1.2", "10.244.2.2", "10.244.3.2")
				s.External = eps(8080, "10.244.1.2")
			})}, Endpoints: 3, LocalReady: 1},
		},
		{
			name: "LoadBalancer, externalTrafficPolicy Local: ingress IPs of its family but ipMode Proxy ones, health check with the local ready count",
			svc: svc(v4, http80, lbLocal, func(s *corev1.Service) {
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
					{IP: "198.51.100.1"}, {IP: "198.51.100.2", IPMode: &vipMode}, {IP: "198.51.100.3", IPMode: &proxyMode},
					{IP: "2001:db8::1"}, {Hostname: "lb.example.com"},
				}
			}),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				ep("10.244.1.2", "n1"), ep("10.244.1.3", "n1"), ep("10.244.1.4", "n1", "notready", "serving", "terminating"), ep("10.244.2.2", "n2"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.NodePort, s.ExternalLocal = 30080, true
				s.LoadBalancerIPs = ips("198.51.100.1", "198.51.100.2")
				s.Internal = eps(8080, "10.244.1.2", "10.244.1.3", "10.244.2.2")
				s.External = eps(8080, "10.244.1.2", "10.244.1.3")
			})}, HealthCheckNodePort: 32000, LocalReady: 2, Endpoints: 3},
		},
		{
			name:   "LoadBalancer, externalTrafficPolicy Local, no local endpoint: health check with 0",
			svc:    svc(v4, http80, lbLocal),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080, ep("10.244.2.2", "n2"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.NodePort, s.ExternalLocal = 30080, true
				s.Internal = eps(8080, "10.244.2.2")
			})}, HealthCheckNodePort: 32000, Endpoints: 1},
		},
		{
			name: "externalIPs of the service's family, on a ClusterIP service",
			svc: svc(v4, http80, func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.7", "2001:db8::7", "bogus"}
			}),
			slices: []*discoveryv1.EndpointSlice{three},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.ExternalIPs = ips("203.0.113.7")
				s.Internal = eps(8080, "10.244.1.2", "10.244.2.2", "10.244.3.2")
				s.External = s.Internal
			})}, Endpoints: 3, LocalReady: 1},
		},
		{
			name: "sessionAffinity ClientIP: default timeout",
			svc:  svc(v4, http80, func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP }),
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) { s.Affinity = 3 * time.Hour })}},
		},
		{
			name: "sessionAffinity ClientIP with a timeout",
			svc: svc(v4, http80, func(s *corev1.Service) {
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
			}),
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) { s.Affinity = time.Minute })}},
		},
		{
			name: "topology: every endpoint hinted, some for the node's zone: those",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				hinted(ep("10.244.1.2", "n1"), "a"), hinted(ep("10.244.2.2", "n2"), "b"), hinted(ep("10.244.3.2", "n3"), "b", "a"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2", "10.244.3.2")
			})}, Endpoints: 2, LocalReady: 1},
		},
		{
			name: "topology: an endpoint without hints: all",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				hinted(ep("10.244.1.2", "n1"), "a"), ep("10.244.2.2", "n2"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2", "10.244.2.2")
			})}, Endpoints: 2, LocalReady: 1},
		},
		{
			name: "topology: none for the node's zone: all",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				hinted(ep("10.244.1.2", "n1"), "b"), hinted(ep("10.244.2.2", "n2"), "c"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2", "10.244.2.2")
			})}, Endpoints: 2, LocalReady: 1},
		},
		{
			name: "topology: node hints, some for the node: those, before zone hints",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				nodeHinted(hinted(ep("10.244.1.2", "n1"), "a"), "n1"), nodeHinted(hinted(ep("10.244.2.2", "n2"), "a"), "n2"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2")
			})}, Endpoints: 1, LocalReady: 1},
		},
		{
			name: "topology: node hints, none for the node: zone hints",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				nodeHinted(hinted(ep("10.244.2.2", "n2"), "a"), "n2"), nodeHinted(hinted(ep("10.244.3.2", "n3"), "b"), "n3"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.2.2")
			})}, Endpoints: 1},
		},
		{
			name: "topology: a ready endpoint without node hints: zone hints",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				nodeHinted(hinted(ep("10.244.1.2", "n1"), "b"), "n1"), hinted(ep("10.244.2.2", "n2"), "a"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.2.2")
			})}, Endpoints: 1, LocalReady: 1},
		},
		{
			name: "topology: node hints and a not-ready endpoint without: those",
			svc:  svc(v4, http80),
			slices: []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
				nodeHinted(ep("10.244.1.2", "n1"), "n1"), ep("10.244.2.2", "n2", "notready"), nodeHinted(ep("10.244.3.2", "n3"), "n3"))},
			want: Result{Ports: []dataplane.Service{web(func(s *dataplane.Service) {
				s.Internal = eps(8080, "10.244.1.2")
			})}, Endpoints: 1, LocalReady: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := withoutRemote(Build(tt.svc, tt.slices, testNode))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Build:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// withoutRemote is r with every endpoint's Remote false: TestBuild
// checks which endpoints serve, TestBuildRemote where they are.
func withoutRemote(r Result) Result {
	for i := range r.Ports {
		p := &r.Ports[i]
		for _, eps := range [][]dataplane.Endpoint{p.Internal, p.External, p.Cluster} {
			for j := range eps {
				eps[j].Remote = false
			}
		}
	}
	return r
}

// TestBuildRemote: an endpoint is Remote when its slice names another
// node; one on this node or on none is not (the hairpin set keeps it).
// Of one address and port in two slices, the local one wins, then the
// one not known to be remote.
func TestBuildRemote(t *testing.T) {
	s := svc([]string{"10.96.0.10"}, http80)
	sl1 := slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
		ep("10.244.1.2", "n1"), ep("10.244.2.2", "n2"), ep("10.244.9.2", ""),
		ep("10.244.3.2", "n3"), ep("10.244.4.2", "n4"))
	sl2 := slice("web-2", discoveryv1.AddressTypeIPv4, http8080,
		ep("10.244.3.2", "n1"), ep("10.244.4.2", ""))
	got := Build(s, []*discoveryv1.EndpointSlice{sl1, sl2}, testNode)
	want := []dataplane.Endpoint{
		{Addr: netip.MustParseAddr("10.244.1.2"), Port: 8080},
		{Addr: netip.MustParseAddr("10.244.2.2"), Port: 8080, Remote: true},
		{Addr: netip.MustParseAddr("10.244.3.2"), Port: 8080},
		{Addr: netip.MustParseAddr("10.244.4.2"), Port: 8080},
		{Addr: netip.MustParseAddr("10.244.9.2"), Port: 8080},
	}
	if len(got.Ports) != 1 || !reflect.DeepEqual(got.Ports[0].Internal, want) {
		t.Errorf("Build: %+v\nwant internal %+v", got.Ports, want)
	}
}

// TestBuildNodeWithoutZone: a node without a zone label ignores hints.
func TestBuildNodeWithoutZone(t *testing.T) {
	s := svc([]string{"10.96.0.10"}, http80)
	sl := slice("web-1", discoveryv1.AddressTypeIPv4, http8080, hinted(ep("10.244.1.2", "n1"), "a"), hinted(ep("10.244.2.2", "n2"), "b"))
	got := withoutRemote(Build(s, []*discoveryv1.EndpointSlice{sl}, Node{Name: "n1"}))
	if want := eps(8080, "10.244.1.2", "10.244.2.2"); len(got.Ports) != 1 || !reflect.DeepEqual(got.Ports[0].Internal, want) {
		t.Errorf("Build without a zone: %+v, want internal %v", got.Ports, want)
	}
}

// BenchmarkBuild resolves one Service with a slice of 5 ready endpoints:
// what a sync costs the model per queued Service (a cold start at 10,000
// Services is 10,000 of these).
func BenchmarkBuild(b *testing.B) {
	s := svc([]string{"10.96.0.10"}, http80)
	sl := slice("web-1", discoveryv1.AddressTypeIPv4, http8080,
		ep("10.244.1.1", "n1", "ready"), ep("10.244.1.2", "n2", "ready"), ep("10.244.1.3", "n1", "ready"),
		ep("10.244.1.4", "n2", "ready"), ep("10.244.1.5", "n3", "ready"))
	node := Node{Name: "n1"}
	for b.Loop() {
		if r := Build(s, []*discoveryv1.EndpointSlice{sl}, node); len(r.Ports) != 1 {
			b.Fatalf("%d ports", len(r.Ports))
		}
	}
}

func TestBuildSourceRanges(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	lb := func(ranges []string, ingress ...string) *corev1.Service {
		return svc([]string{"10.96.0.10", "fd00:96::10"}, http80, func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.Ports[0].NodePort = 30080
			s.Spec.LoadBalancerSourceRanges = ranges
			for _, ip := range ingress {
				s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
			}
		})
	}
	node := Node{Name: "n1", IPs: ips("192.168.1.5", "fd50::5")}
	for _, tc := range []struct {
		name       string
		svc        *corev1.Service
		want4      []netip.Prefix
		want6      []netip.Prefix
		wantIgnore []string
	}{
		{
			name:  "per family; spaces trimmed, leading zeros decimal, host bits cleared, duplicates once",
			svc:   lb([]string{" 10.0.0.0/8", "010.1.0.0/16", "2001:db8::1/32", "10.0.0.0/8"}, "198.51.100.1", "2001:db8:100::1"),
			want4: pfx("10.0.0.0/8", "10.1.0.0/16"), want6: pfx("2001:db8::/32"),
		},
		{
			name:  "malformed entries skipped, empty ones silently",
			svc:   lb([]string{"bogus", "10.0.0.0/33", "", "10.2.0.0/16", "10.3.0.0"}, "198.51.100.1", "2001:db8:100::1"),
			want4: pfx("10.2.0.0/16"), wantIgnore: []string{"bogus", "10.0.0.0/33", "10.3.0.0"},
		},
		{
			name:  "a range holding the node's address allows the load-balancer IPs too",
			svc:   lb([]string{"192.168.1.0/24", "2001:db8::/32"}, "198.51.100.1", "198.51.100.2", "2001:db8:100::1"),
			want4: pfx("192.168.1.0/24", "198.51.100.1/32", "198.51.100.2/32"), want6: pfx("2001:db8::/32"),
		},
		{
			name:  "no load-balancer IP of the family: no restriction",
			svc:   lb([]string{"10.0.0.0/8", "2001:db8::/32"}, "2001:db8:100::1"),
			want6: pfx("2001:db8::/32"),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Build(tc.svc, nil, node)
			if len(r.Ports) != 2 {
				t.Fatalf("ports %+v", r.Ports)
			}
			for _, p := range r.Ports {
				want := tc.want4
				if p.Family == dataplane.IPv6 {
					want = tc.want6
				}
				if !slices.Equal(p.SourceRanges, want) {
					t.Errorf("%s: SourceRanges %v, want %v", p.ID(), p.SourceRanges, want)
				}
			}
			if !slices.Equal(r.IgnoredSourceRanges, tc.wantIgnore) {
				t.Errorf("IgnoredSourceRanges %q, want %q", r.IgnoredSourceRanges, tc.wantIgnore)
			}
		})
	}
}
