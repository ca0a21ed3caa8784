package macvlan

import (
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/cniplugin"
)

// Conf is the configuration of both plugins: the reference macvlan's and
// ipvlan's fields (ipvlan has no mac).
type Conf struct {
	cniplugin.NetConf
	// Master is the parent interface; empty means the interface of the
	// default route (or, for a chained ipvlan, prevResult's single
	// interface).
	Master string `json:"master"`
	// Mode is the kind's mode, empty for its default.
	Mode string `json:"mode"`
	// MTU is the interface's MTU, 0 for the kernel's choice; at most the
	// master's.
	MTU int `json:"mtu"`
	// Mac is the interface's hardware address (macvlan only).
	Mac string `json:"mac,omitempty"`
	// LinkInContainer says the master lives in the container's namespace.
	LinkInContainer bool `json:"linkInContainer,omitempty"`

	RuntimeConfig struct {
		Mac string `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	mac net.HardwareAddr
}

// decode parses the configuration without validating what only ADD and
// CHECK need: DEL, GC and STATUS must work with any configuration that
// parses.
func decode(data []byte) (*Conf, error) { return cniplugin.DecodeNew[Conf](data) }

// load decodes and validates the configuration for ADD and CHECK; envArgs
// is CNI_ARGS. The master is resolved later, in the namespace it lives in.
func load(k *kind, data []byte, envArgs string) (*Conf, error) {
	c, err := decode(data)
	if err != nil {
		return nil, err
	}
	if _, ok := k.mode(c.Mode); !ok {
		return nil, cniplugin.Invalid("unknown %s mode %q (one of %v)", k.name, c.Mode, k.modes)
	}
	if c.MTU < 0 || c.MTU > 65535 {
		return nil, cniplugin.Invalid("invalid mtu %d", c.MTU)
	}
	if c.Master != "" {
		if err := cniplugin.CheckLinkName("master", c.Master); err != nil {
			return nil, err
		}
	}
	if k.ipamRequired && c.IPAM.Type == "" {
		prev, err := c.Prev()
		if err != nil {
			return nil, err
		}
		if len(prev.IPs) == 0 {
			return nil, cniplugin.Invalid("%s needs an IPAM plugin, or a prevResult with addresses when chained", k.name)
		}
	}
	if !k.hasMAC {
		return c, nil
	}
	// The reference's precedence: config, then CNI_ARGS MAC=, then the
	// "mac" capability.
	if c.Mac != "" {
		if c.mac, err = net.ParseMAC(c.Mac); err != nil {
			return nil, cniplugin.Invalid("invalid mac %q: %v", c.Mac, err)
		}
	}
	if envArgs != "" {
		a, err := cniplugin.ParseArgs(envArgs)
		if err != nil {
			return nil, err
		}
		if a.MAC != "" {
			if c.mac, err = net.ParseMAC(string(a.MAC)); err != nil {
				return nil, cniplugin.Errorf(types.ErrInvalidEnvironmentVariables, "invalid MAC=%q in CNI_ARGS: %v", a.MAC, err)
			}
		}
	}
	if m := c.RuntimeConfig.Mac; m != "" {
		if c.mac, err = net.ParseMAC(m); err != nil {
			return nil, cniplugin.Invalid("invalid runtimeConfig mac %q: %v", m, err)
		}
	}
	if c.mac != nil {
		if err := cniplugin.CheckMAC("mac", c.mac); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// chainedMaster is, for a kind that may be chained, the master the
// reference takes when none is configured: prevResult's single named
// interface. It returns "" when there is no prevResult.
func (c *Conf) chainedMaster() (string, error) {
	if c.NetConf.PrevResult == nil {
		return "", nil
	}
	prev, err := c.Prev()
	if err != nil {
		return "", err
	}
	if len(prev.Interfaces) != 1 || prev.Interfaces[0].Name == "" {
		return "", cniplugin.Invalid("no master given and prevResult does not have a single named interface to use as master")
	}
	return prev.Interfaces[0].Name, nil
}

// prevIPs returns the addresses and routes of prevResult, which a chained
// plugin without IPAM configures on its interface.
func (c *Conf) prevIPs() (*current.Result, error) {
	prev, err := c.Prev()
	if err != nil {
		return nil, err
	}
	if len(prev.IPs) == 0 {
		return nil, fmt.Errorf("prevResult has no addresses")
	}
	return prev, nil
}
