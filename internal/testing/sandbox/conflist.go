package sandbox

import (
	"encoding/json"
	"fmt"

	"github.com/containernetworking/cni/libcni"
)

// Conf is one plugin's configuration in a conflist, as JSON fields.
type Conf map[string]any

// ConfList is a network configuration list as a runtime reads it from
// /etc/cni/net.d.
type ConfList struct {
	Name       string
	CNIVersion string
	Plugins    []Conf
}

// JSON encodes the list.
func (c ConfList) JSON() []byte {
	b, err := json.MarshalIndent(map[string]any{
		"cniVersion": c.CNIVersion,
		"name":       c.Name,
		"plugins":    c.Plugins,
	}, "", "  ")
	if err != nil {
		panic(err) // only maps, slices and scalars
	}
	return b
}

// List parses the list as libcni does when it loads a conflist file.
func (c ConfList) List() (*libcni.NetworkConfigList, error) {
	l, err := libcni.ConfListFromBytes(c.JSON())
	if err != nil {
		return nil, fmt.Errorf("conflist %s: %w", c.Name, err)
	}
	return l, nil
}

// PluginConf returns plugin i's configuration as a single-plugin config:
// the bytes a plugin receives on stdin (name and cniVersion injected).
func (c ConfList) PluginConf(i int) []byte {
	m := map[string]any{}
	for k, v := range c.Plugins[i] {
		m[k] = v
	}
	m["name"] = c.Name
	m["cniVersion"] = c.CNIVersion
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// Loopback is the loopback plugin's configuration.
func Loopback() Conf { return Conf{"type": "loopback"} }

// Bridge is the reference bridge configuration a node normally uses
// (containerd's default conflist): a gateway on the bridge, masquerade,
// and the given IPAM.
func Bridge(bridge string, ipam Conf) Conf {
	return Conf{
		"type":      "bridge",
		"bridge":    bridge,
		"isGateway": true,
		"ipMasq":    true,
		"ipam":      ipam,
	}
}

// PTP is the reference ptp configuration with masquerade.
func PTP(ipam Conf) Conf {
	return Conf{"type": "ptp", "ipMasq": true, "ipam": ipam}
}

// HostLocal is host-local IPAM over one subnet, its state in dataDir,
// with a default route (containerd's default).
func HostLocal(subnet, dataDir string) Conf {
	return Conf{
		"type":    "host-local",
		"ranges":  []any{[]any{Conf{"subnet": subnet}}},
		"routes":  []any{Conf{"dst": "0.0.0.0/0"}},
		"dataDir": dataDir,
	}
}

// Static is static IPAM with fixed addresses in CIDR notation; with a
// gateway, each address names it and a default route goes through it.
func Static(gateway string, addrs ...string) Conf {
	list := make([]any, 0, len(addrs))
	for _, a := range addrs {
		e := Conf{"address": a}
		if gateway != "" {
			e["gateway"] = gateway
		}
		list = append(list, e)
	}
	c := Conf{"type": "static", "addresses": list}
	if gateway != "" {
		c["routes"] = []any{Conf{"dst": "0.0.0.0/0", "gw": gateway}}
	}
	return c
}
