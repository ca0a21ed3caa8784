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
		{"rate without burst", `"ingressRate":8000`, true, 1000},
		{"burst without rate", `"ingressBurst":8000`, false, 0},
		{"burst of 4GB", `"ingressRate":8000000,"ingressBurst":34359738368`, false, 0},
		// containerd's burst for the kubernetes.io/ingress-bandwidth
		// annotation ("none given"): the default.
		{"containerd's burst", `"runtimeConfig":{"bandwidth":{"ingressRate":8000000,"ingressBurst":4294967295}}`, true, 1_000_000},
		// Another burst longer than the kernel can time at the rate is cut.
		{"a burst beyond the kernel's timer", `"runtimeConfig":{"bandwidth":{"ingressRate":1000000,"ingressBurst":4294967294}}`, true, 125000},
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
			if tc.ok && (p.ingress.rate != tc.ingress || p.hasIngress != (tc.ingress > 0)) {
				t.Errorf("ingress rate %d B/s, want %d", p.ingress.rate, tc.ingress)
			}
			if p.hasIngress && (p.ingress.burst > maxBurst(p.ingress.rate) || p.ingress.buffer == 0 ||
				p.ingress.buffer != netlink.Xmittime(p.ingress.rate, p.ingress.burst)) {
				t.Errorf("ingress burst %d B, buffer %d ticks: beyond what the kernel times at %d B/s", p.ingress.burst, p.ingress.buffer, p.ingress.rate)
			}
		})
	}
}

// TestDefaultBurst: a burst the runtime leaves out (0) or marks as "none
// given" (NoBurst) is max(rate × 5 ms, 64 KiB), below what the kernel can
// time at the rate.
func TestDefaultBurst(t *testing.T) {
	for _, tc := range []struct {
		rateBits uint64
		burst    uint32 // bytes
	}{
		{8_000_000, 64 << 10},        // 1 MB/s: 5 KB, raised to 64 KiB
		{100_000_000, 64 << 10},      // 12.5 MB/s: 62.5 KB
		{1_000_000_000, 625_000},     // 125 MB/s: 625 KB
		{10_000_000_000, 6_250_000},  // 1.25 GB/s: 6.25 MB
		{1_000, maxBurst(1_000 / 8)}, // 125 B/s: 64 KiB is beyond the timer
		{40_000_000_000, 25_000_000}, // 5 GB/s
	} {
		for _, burst := range []uint64{0, NoBurst} {
			l := &Limits{IngressRate: tc.rateBits, IngressBurst: burst, EgressRate: tc.rateBits, EgressBurst: burst}
			p, err := PlanOf(l)
			if err != nil {
				t.Fatalf("rate %d, burst %d: %v", tc.rateBits, burst, err)
			}
			for _, s := range []shaping{p.ingress, p.egress} {
				if s.burst != tc.burst || s.buffer != netlink.Xmittime(s.rate, s.burst) {
					t.Errorf("rate %d bit/s, burst %d: %d B (buffer %d), want %d B", tc.rateBits, burst, s.burst, s.buffer, tc.burst)
				}
			}
		}
	}
}
