package sandbox

// Routed is the podnet plugin's configuration as the node agent writes it:
// a routed veth with the given MTU (0: the kernel's default) and IPAM.
func Routed(mtu int, ipam Conf) Conf {
	c := Conf{"type": "podnet", "ipam": ipam}
	if mtu > 0 {
		c["mtu"] = mtu
	}
	return c
}

// HostLocalRanges is host-local IPAM with one range set per subnet (one
// address per family for a dual-stack pod), its state in dataDir, and no
// routes.
func HostLocalRanges(dataDir string, subnets ...string) Conf {
	sets := make([]any, 0, len(subnets))
	for _, s := range subnets {
		sets = append(sets, []any{Conf{"subnet": s}})
	}
	return Conf{"type": "host-local", "ranges": sets, "dataDir": dataDir}
}
