package sandbox

import "path/filepath"

// FullChain is the full chain as a node's runtime configures it:
// bridge+host-local on its own bridge and subnet, then portmap, bandwidth
// and tuning (a sysctl), their state under dataDir (ipam/, tuning/). The
// port mappings and the rates come as capability args (ChainCaps).
func FullChain(name, version, bridge, subnet, dataDir string) ConfList {
	return ConfList{Name: name, CNIVersion: version, Plugins: []Conf{
		Bridge(bridge, HostLocal(subnet, filepath.Join(dataDir, "ipam"))),
		PortMap(nil),
		Bandwidth(),
		Tuning(Conf{
			"dataDir": filepath.Join(dataDir, "tuning"),
			"sysctl":  map[string]any{"net.ipv4.conf.eth0.arp_notify": "1"},
		}),
	}}
}

// ChainCaps are the capability args of a pod of a network with portmap and
// bandwidth, as containerd sends them: a TCP and a UDP host port (hostPort,
// distinct per pod, to the pod's ports 80 and 53), and ingress and egress
// rates of 100 Mbit/s with 1 Mbit bursts.
func ChainCaps(hostPort int) map[string]any {
	caps := BandwidthCap(100_000_000, 1_000_000, 100_000_000, 1_000_000)
	for k, v := range PortMappings(
		PortMapping("tcp", hostPort, 80, ""),
		PortMapping("udp", hostPort, 53, ""),
	) {
		caps[k] = v
	}
	return caps
}
