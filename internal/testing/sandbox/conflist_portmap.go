package sandbox

// PortMap is the portmap plugin's configuration as containerd's default
// conflist has it: the portMappings capability on, plus extra fields
// (snat, markMasqBit, conditionsV4, …).
func PortMap(extra Conf) Conf {
	c := Conf{"type": "portmap", "capabilities": map[string]any{"portMappings": true}}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

// PortMapping is one entry of the portMappings capability as containerd
// sends it (hostIP empty: any address).
func PortMapping(protocol string, hostPort, containerPort int, hostIP string) map[string]any {
	m := map[string]any{"hostPort": hostPort, "containerPort": containerPort, "protocol": protocol}
	if hostIP != "" {
		m["hostIP"] = hostIP
	}
	return m
}

// PortMappings is the capability args of a pod with these mappings.
func PortMappings(ms ...map[string]any) map[string]any {
	list := make([]any, 0, len(ms))
	for _, m := range ms {
		list = append(list, m)
	}
	return map[string]any{"portMappings": list}
}

// HostLocalDual is host-local IPAM over an IPv4 and an IPv6 subnet, with
// default routes of both families.
func HostLocalDual(subnet4, subnet6, dataDir string) Conf {
	return Conf{
		"type":    "host-local",
		"ranges":  []any{[]any{Conf{"subnet": subnet4}}, []any{Conf{"subnet": subnet6}}},
		"routes":  []any{Conf{"dst": "0.0.0.0/0"}, Conf{"dst": "::/0"}},
		"dataDir": dataDir,
	}
}
