package services

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// BenchmarkModel10k is the model's share of a cold sync at the scale of
// make bench-services' largest: 10,000 Services (every tenth a
// NodePort) with one EndpointSlice of 5 ready endpoints each, built and
// counted in the metrics as a full sync does (the kernel's share is
// internal/services/dataplane's BenchmarkSync).
func BenchmarkModel10k(b *testing.B) {
	const n = 10000
	svcs := make([]*corev1.Service, n)
	sls := make([][]*discoveryv1.EndpointSlice, n)
	for i := range n {
		np := int32(0)
		if i%10 == 0 {
			np = 30000 + int32(i/10)
		}
		s := svc([]string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)}, []corev1.ServicePort{port("http", corev1.ProtocolTCP, 80, np)})
		s.Name = fmt.Sprintf("svc-%d", i)
		if np != 0 {
			s.Spec.Type = corev1.ServiceTypeNodePort
		}
		var es []discoveryv1.Endpoint
		for j := range 5 {
			es = append(es, ep(fmt.Sprintf("10.244.%d.%d", j, i%250+1), fmt.Sprintf("n%d", j)))
		}
		sl := slice(s.Name+"-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{sport("http", corev1.ProtocolTCP, 8080)}, es...)
		sl.Labels[discoveryv1.LabelServiceName] = s.Name
		svcs[i], sls[i] = s, []*discoveryv1.EndpointSlice{sl}
	}
	m := newMetrics(prometheus.NewRegistry())
	b.ReportAllocs()
	for b.Loop() {
		for i, s := range svcs {
			r := Build(s, sls[i], testNode)
			m.service("ns/"+s.Name, r, len(r.Ports) > 0)
		}
	}
}
