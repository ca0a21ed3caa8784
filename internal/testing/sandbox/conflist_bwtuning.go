package sandbox

// Bandwidth is the bandwidth plugin with the bandwidth capability enabled,
// as containerd's and CRI-O's default conflists have it.
func Bandwidth() Conf {
	return Conf{"type": "bandwidth", "capabilities": map[string]any{"bandwidth": true}}
}

// BandwidthCap is the "bandwidth" capability argument as containerd sends
// it from the kubernetes.io/{ingress,egress}-bandwidth annotations: rates
// in bits per second, bursts in bits; zero leaves a direction unlimited.
func BandwidthCap(ingressRate, ingressBurst, egressRate, egressBurst uint64) map[string]any {
	return map[string]any{"bandwidth": map[string]any{
		"ingressRate": ingressRate, "ingressBurst": ingressBurst,
		"egressRate": egressRate, "egressBurst": egressBurst,
	}}
}

// Tuning is the tuning plugin with the mac capability enabled and the
// given fields (sysctl, mac, mtu, promisc, allmulti, txQLen, dataDir).
func Tuning(fields Conf) Conf {
	c := Conf{"type": "tuning", "capabilities": map[string]any{"mac": true}}
	for k, v := range fields {
		c[k] = v
	}
	return c
}
