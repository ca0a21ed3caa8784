// Package static is the static IPAM plugin: the addresses, routes and DNS
// a configuration (or the runtime) names, as the reference plugin returns
// them. It keeps no state, so DEL and GC have nothing to release.
package static

import (
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/internal/cniplugin"
)

// Plugin returns the static plugin.
func Plugin() cniplugin.Plugin {
	return cniplugin.Plugin{Add: add, Del: validate, Check: check, GC: validate, Status: validate}
}

// decode reads the configuration without the addresses, which the runtime
// may supply only at ADD time.
func decode(args *skel.CmdArgs) (*Conf, error) {
	c := &Conf{}
	if err := cniplugin.Decode(args.StdinData, c); err != nil {
		return nil, err
	}
	if c.IPAM == nil {
		return nil, cniplugin.Invalid("IPAM config missing 'ipam' key")
	}
	return c, nil
}

// Conf is a network configuration as static reads it.
type Conf struct {
	cniplugin.NetConf
	IPAM *struct {
		Addresses []Address      `json:"addresses,omitempty"`
		Routes    []*types.Route `json:"routes"`
		DNS       types.DNS      `json:"dns"`
	} `json:"ipam"`
	RuntimeConfig struct {
		IPs []string `json:"ips,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	Args *struct {
		CNI *struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args,omitempty"`
}

// Address is one configured address (a CIDR) and its optional gateway.
type Address struct {
	AddressStr string `json:"address"`
	Gateway    net.IP `json:"gateway,omitempty"`
	address    net.IPNet
}

// load reads the configuration with the reference's precedence: the ips
// capability replaces the configured addresses, args.cni.ips replaces
// both, and IP= in CNI_ARGS adds to them; GATEWAY= sets the gateway of the
// addresses whose subnet contains it.
func load(args *skel.CmdArgs) (*Conf, error) {
	c, err := decode(args)
	if err != nil {
		return nil, err
	}
	addrs := c.IPAM.Addresses
	if len(c.RuntimeConfig.IPs) > 0 {
		addrs = nil
		for _, s := range c.RuntimeConfig.IPs {
			addrs = append(addrs, Address{AddressStr: s})
		}
	}
	if c.Args != nil && c.Args.CNI != nil && len(c.Args.CNI.IPs) > 0 {
		addrs = nil
		for _, s := range c.Args.CNI.IPs {
			addrs = append(addrs, Address{AddressStr: s})
		}
	}
	env, err := cniplugin.ParseArgs(args.Args)
	if err != nil {
		return nil, err
	}
	for _, s := range env.IP {
		addrs = append(addrs, Address{AddressStr: s})
	}
	v4, v6 := 0, 0
	for i := range addrs {
		ip, n, err := net.ParseCIDR(strings.TrimSpace(addrs[i].AddressStr))
		if err != nil {
			return nil, cniplugin.Invalid("invalid CIDR %s: %v", addrs[i].AddressStr, err)
		}
		if v4ip := ip.To4(); v4ip != nil {
			ip = v4ip
			v4++
		} else {
			v6++
		}
		addrs[i].address = net.IPNet{IP: ip, Mask: n.Mask}
	}
	if env.GATEWAY != "" {
		for _, s := range strings.Split(string(env.GATEWAY), ",") {
			gw := net.ParseIP(strings.TrimSpace(s))
			if gw == nil {
				return nil, cniplugin.Errorf(types.ErrInvalidEnvironmentVariables, "invalid gateway address %q", s)
			}
			for i := range addrs {
				if addrs[i].address.Contains(gw) {
					addrs[i].Gateway = gw
				}
			}
		}
	}
	if len(addrs) == 0 {
		return nil, cniplugin.Invalid("static IPAM has no addresses")
	}
	if v4 > 1 || v6 > 1 {
		if ok, _ := version.GreaterThanOrEqualTo(c.CNIVersion, "0.3.0"); !ok {
			return nil, cniplugin.Invalid("CNI version %v does not support more than 1 address per family", c.CNIVersion)
		}
	}
	c.IPAM.Addresses = addrs
	return c, nil
}

func add(args *skel.CmdArgs) (types.Result, error) {
	c, err := load(args)
	if err != nil {
		return nil, err
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, DNS: c.IPAM.DNS, Routes: c.IPAM.Routes}
	for _, a := range c.IPAM.Addresses {
		res.IPs = append(res.IPs, &current.IPConfig{Address: a.address, Gateway: a.Gateway})
	}
	return res, nil
}

// validate is DEL, GC and STATUS: nothing to release or to run out of, but
// the configuration must still decode.
func validate(args *skel.CmdArgs) error {
	_, err := decode(args)
	return err
}

// check verifies every configured address is in prevResult with its gateway.
func check(args *skel.CmdArgs) error {
	c, err := load(args)
	if err != nil {
		return err
	}
	prev, err := c.Prev()
	if err != nil {
		return err
	}
	for _, a := range c.IPAM.Addresses {
		found := false
		for _, ipc := range prev.IPs {
			if ipc.Address.IP.Equal(a.address.IP) && (a.Gateway == nil || a.Gateway.Equal(ipc.Gateway)) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("static: address %s is not in prevResult on %s", a.address.String(), args.IfName)
		}
	}
	return nil
}
