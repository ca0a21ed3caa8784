// Package firewall is the firewall plugin: a chained plugin that admits
// forwarded traffic to and from the pod's addresses, and isolates bridges
// from each other by the reference's ingressPolicy, in podnet's own
// nftables table (whatever backend the configuration names).
package firewall

import (
	"fmt"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/attach"
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/nft/podrules"
)

// Conf is the firewall plugin's configuration: the reference's fields.
type Conf struct {
	cniplugin.NetConf
	// Backend is accepted with the reference's values ("iptables",
	// "firewalld") and "nftables"; podnet always programs its own
	// nftables table.
	Backend string `json:"backend"`
	// IptablesAdminChainName is accepted for compatibility: podnet's
	// chains are in its own table, and an administrator's rules go in
	// a chain of their own (see docs/plugins.md).
	IptablesAdminChainName string `json:"iptablesAdminChainName,omitempty"`
	// FirewalldZone is accepted for compatibility and not used.
	FirewalldZone string `json:"firewalldZone,omitempty"`
	// IngressPolicy is "open" (default), "same-bridge" or "isolated".
	IngressPolicy string `json:"ingressPolicy,omitempty"`
}

var policies = map[string]podrules.Isolation{
	"":            podrules.Open,
	"open":        podrules.Open,
	"same-bridge": podrules.SameBridge,
	"isolated":    podrules.Isolated,
}

// Plugin returns the firewall plugin.
func Plugin() cniplugin.Plugin {
	return cniplugin.Plugin{Add: add, Del: del, Check: check, GC: gc}
}

func decode(data []byte) (*Conf, error) { return cniplugin.DecodeNew[Conf](data) }

// load decodes and validates the configuration for ADD and CHECK.
func load(data []byte) (*Conf, error) {
	c, err := decode(data)
	if err != nil {
		return nil, err
	}
	switch c.Backend {
	case "", "iptables", "firewalld", "nftables":
	default:
		return nil, cniplugin.Invalid("unknown firewall backend %q (iptables, firewalld or nftables)", c.Backend)
	}
	if _, ok := policies[c.IngressPolicy]; !ok {
		return nil, cniplugin.Invalid("unknown ingress policy %q (open, same-bridge or isolated)", c.IngressPolicy)
	}
	if c.NetConf.PrevResult == nil {
		return nil, cniplugin.Invalid("firewall is a chained plugin: missing prevResult from an earlier plugin")
	}
	return c, nil
}

// spec is what the rules of the attachment are made of: the addresses of
// prevResult and, for the isolating policies, the bridge: prevResult's
// first interface, as the reference takes it.
func spec(c *Conf) (podrules.Firewall, error) {
	prev, err := c.Prev()
	if err != nil {
		return podrules.Firewall{}, err
	}
	f := podrules.Firewall{Isolation: policies[c.IngressPolicy]}
	for _, ipc := range prev.IPs {
		f.IPs = append(f.IPs, ipc.Address.IP)
	}
	if f.Isolation != podrules.Open {
		if len(prev.Interfaces) == 0 || prev.Interfaces[0] == nil || prev.Interfaces[0].Name == "" {
			return podrules.Firewall{}, cniplugin.Invalid(
				"ingress policy %q needs the bridge as prevResult's first interface: chain firewall after bridge", c.IngressPolicy)
		}
		f.Bridge = prev.Interfaces[0].Name
		// The bridge plugin reports the pod's host-side port after the
		// bridge, without a sandbox.
		for _, i := range prev.Interfaces[1:] {
			if i != nil && i.Sandbox == "" && i.Name != "" {
				f.Ports = append(f.Ports, i.Name)
			}
		}
	}
	return f, nil
}

// withConn runs f with a connection to podnet's tables in the caller's
// (the host's) namespace.
func withConn(f func(*podrules.Conn) error) error {
	c, err := podrules.New(0)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer c.Close()
	return f(c)
}

func add(args *skel.CmdArgs) (types.Result, error) {
	c, err := load(args.StdinData)
	if err != nil {
		return nil, err
	}
	f, err := spec(c)
	if err != nil {
		return nil, err
	}
	id := cniplugin.AttachmentOf(c.Name, args)
	if err := withConn(func(n *podrules.Conn) error { return n.AddFirewall(id, f) }); err != nil {
		return nil, err
	}
	return c.Prev()
}

func check(args *skel.CmdArgs) error {
	c, err := load(args.StdinData)
	if err != nil {
		return err
	}
	if _, err := attach.CheckPrev(&c.NetConf); err != nil {
		return err
	}
	f, err := spec(c)
	if err != nil {
		return err
	}
	id := cniplugin.AttachmentOf(c.Name, args)
	return withConn(func(n *podrules.Conn) error { return n.CheckFirewall(id, f) })
}

// del removes the attachment's firewall rules by its identity alone: no
// netns, prevResult or valid policy needed.
func del(args *skel.CmdArgs) error {
	c, err := decode(args.StdinData)
	if err != nil {
		return err
	}
	id := cniplugin.AttachmentOf(c.Name, args)
	return withConn(func(n *podrules.Conn) error { return n.DelFirewall(id) })
}

// gc removes the rules of the network's attachments that are not valid.
func gc(args *skel.CmdArgs) error {
	c, err := decode(args.StdinData)
	if err != nil {
		return err
	}
	return withConn(func(n *podrules.Conn) error {
		return n.GC(c.Name, func(a attachment.ID) bool { return c.KeepsAttachment(a) })
	})
}
