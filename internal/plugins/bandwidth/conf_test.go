package bandwidth

import (
	"testing"

	"github.com/vishvananda/netlink"
)

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		ok         bool
		ingress    uint64 // expected ingress bytes/s, 0 for none
	}{
		{"capability", `"runtimeConfig":{"bandwidth":{"ingressRate":8000,"ingressBurst":8000}}`, true, 1000},
		{"config wins over capability", `"ingressRate":16000,"ingressBurst":8000,"runtimeConfig":{"bandwidth":{"ingressRate":8000,"ingressBurst":8000}}`, true, 2000},
		{"nothing", ``, true, 0},
		{"rate without burst", `"egressRate":8000`, false, 0},
		{"burst without rate", `"ingressBurst":8000`, false, 0},
		{"burst of 4GB", `"ingressRate":8000000,"ingressBurst":34359738368`, false, 0},
		// containerd's burst for the kubernetes.io/ingress-bandwidth
		// annotation, at 1M: cut to what the kernel can time.
		{"containerd's burst at a low rate", `"runtimeConfig":{"bandwidth":{"ingressRate":1000000,"ingressBurst":4294967295}}`, true, 125000},
		{"subnets", `"ingressRate":8000,"ingressBurst":8000,"shapedSubnets":["10.0.0.0/8"]`, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := `{"cniVersion":"1.0.0","name":"n","type":"bandwidth"`
			if tc.conf != "" {
				data += "," + tc.conf
			}
			_, p, err := load([]byte(data + "}"))
			if (err == nil) != tc.ok {
				t.Fatalf("load: %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && p.ingress.rate != tc.ingress {
				t.Errorf("ingress rate %d B/s, want %d", p.ingress.rate, tc.ingress)
			}
			if p.hasIngress && (p.ingress.burst > maxBurst(p.ingress.rate) || p.ingress.buffer == 0 ||
				p.ingress.buffer != netlink.Xmittime(p.ingress.rate, p.ingress.burst)) {
				t.Errorf("ingress burst %d B, buffer %d ticks: beyond what the kernel times at %d B/s", p.ingress.burst, p.ingress.buffer, p.ingress.rate)
			}
		})
	}
}
