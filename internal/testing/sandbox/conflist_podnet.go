package sandbox

import (
	"fmt"
	"maps"

	"github.com/containernetworking/cni/libcni"

	"github.com/podnet/podnet/internal/cniconf"
)

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

// Cluster is podnet's cluster conflist as the node agent writes it
// (cniconf.Cluster without a chain: the podnet plugin alone, honouring
// the portMappings and bandwidth capabilities) over subnets at cniVersion
// version, with MTU 1500 and host-local's state in dataDir, as libcni
// loads it.
func Cluster(version, dataDir string, subnets ...string) (*libcni.NetworkConfigList, error) {
	b, err := cniconf.Cluster{Subnets: subnets, MTU: 1500, IPAMDir: dataDir, CNIVersion: version}.Conflist()
	if err != nil {
		return nil, err
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("cluster conflist: %w", err)
	}
	return l, nil
}

// Caps merges capability args (such as PortMappings and BandwidthCap).
func Caps(args ...map[string]any) map[string]any {
	out := map[string]any{}
	for _, a := range args {
		maps.Copy(out, a)
	}
	return out
}
