// Package podnet is the plugin of podnet's own cluster network: a routed
// veth without a bridge, as Calico attaches pods. The pod holds its address
// as a /32 or /128 and sends everything to a link-local gateway on its
// interface; the host end answers for that gateway and the host routes the
// pod's address to it. Addresses come from the IPAM plugin of the
// configuration (the node agent writes host-local over the node's leased
// subnet), so ADD, DEL and GC never need the agent to be running.
//
// The plugin honours the portMappings and bandwidth capabilities itself,
// with the portmap and bandwidth plugins' code and semantics, so that the
// cluster conflist is this one plugin and a pod's ADD is one process: the
// host ports forwarded to the pod in podnet's nftables table, and its
// traffic shaped by token buckets on the host end of its veth (ingress)
// and on the attachment's ifb (egress). DEL, GC and CHECK cover them by
// the attachment's identity, as they cover the veth.
//
// When the configuration names a policy gate (the node agent's socket,
// written when network policy is on), ADD of a Kubernetes pod ends by
// telling the agent the pod's addresses and waiting until its network
// policy is in the kernel (see internal/policy/gate); an error of the
// agent fails ADD with "try again later" (11), undoing it.
package podnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/attach"
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/plugins/bandwidth"
	"github.com/podnet/podnet/internal/plugins/portmap"
	"github.com/podnet/podnet/internal/policy/gate"
)

// gateTimeout bounds ADD's wait for the agent's answer on the policy gate.
const gateTimeout = 10 * time.Second

// The gateways every pod routes through. The host end of each pod's veth
// holds them (the same addresses on every host veth, as the reference ptp
// gives every host end the subnet's gateway); being link-local, they never
// leave the link and never collide with pod or node addresses.
var (
	Gateway4 = net.IPv4(169, 254, 1, 1).To4()
	Gateway6 = net.ParseIP("fe80::1")
)

// Plugin returns the podnet plugin.
func Plugin() cniplugin.Plugin {
	del, gc, status := attach.RoutedTeardown(func(args *skel.CmdArgs) (*cniplugin.NetConf, error) {
		c, err := decode(args.StdinData)
		if err != nil {
			return nil, err
		}
		return &c.NetConf, nil
	})
	return cniplugin.Plugin{Add: add, Del: withUnmap(del), Check: check, GC: gc, Status: status}
}

// Conf is the podnet plugin's configuration.
type Conf struct {
	cniplugin.NetConf
	// MTU of the pod's interface; the agent sets it to the fabric's MTU.
	MTU int `json:"mtu"`
	// PolicyGate is the agent's policy gate socket ("": no gate), told
	// each Kubernetes pod's addresses before ADD returns.
	PolicyGate string `json:"policyGate,omitempty"`
	// Options are the portmap plugin's fields (snat, markMasqBit, …),
	// applied to the mappings of the portMappings capability.
	portmap.Options
	// RuntimeConfig holds the capabilities' arguments.
	RuntimeConfig struct {
		PortMaps  []portmap.Entry   `json:"portMappings,omitempty"`
		Bandwidth *bandwidth.Limits `json:"bandwidth,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	fwd   *portmap.Forwarding
	shape bandwidth.Plan
}

// decode reads and checks the configuration DEL, GC and STATUS need.
func decode(data []byte) (*Conf, error) {
	c := &Conf{}
	if err := cniplugin.Decode(data, c); err != nil {
		return nil, err
	}
	if c.IPAM.Type == "" {
		return nil, cniplugin.Invalid("podnet needs an IPAM plugin")
	}
	if c.MTU < 0 || (c.MTU > 0 && c.MTU < 68) || c.MTU > 65535 {
		return nil, cniplugin.Invalid("invalid mtu %d", c.MTU)
	}
	if c.PolicyGate != "" && !filepath.IsAbs(c.PolicyGate) {
		return nil, cniplugin.Invalid("policyGate %q is not an absolute path", c.PolicyGate)
	}
	return c, nil
}

// load reads the configuration of ADD and CHECK, with the capabilities'
// arguments validated.
func load(data []byte) (*Conf, error) {
	c, err := decode(data)
	if err != nil {
		return nil, err
	}
	if c.fwd, err = c.Options.Compile(c.RuntimeConfig.PortMaps); err != nil {
		return nil, err
	}
	if c.shape, err = bandwidth.PlanOf(c.RuntimeConfig.Bandwidth); err != nil {
		return nil, err
	}
	return c, nil
}

// withUnmap is DEL: the attachment's port forwarding first (so that the
// UDP flows it forwarded are flushed with it), then the routed veth's
// teardown, which removes the rest by identity (the veth with its qdiscs,
// the ifb, every other rule, the addresses).
func withUnmap(del func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		c, err := decode(args.StdinData)
		if err != nil {
			return err
		}
		return errors.Join(portmap.Unmap(cniplugin.AttachmentOf(c.Name, args)), del(args))
	}
}

// gatewayOf is the pod's gateway for an address's family.
func gatewayOf(ip net.IP) net.IP {
	if ip.To4() != nil {
		return Gateway4
	}
	return Gateway6
}

func add(args *skel.CmdArgs) (types.Result, error) {
	c, err := load(args.StdinData)
	if err != nil {
		return nil, err
	}
	var pod *gate.Pod
	if c.PolicyGate != "" {
		if pod, err = podOf(args.Args); err != nil {
			return nil, err
		}
	}
	return attach.AddRouted(args, &c.NetConf, attach.Routing{MTU: c.MTU, Shape: routed, OnLink: gatewayOnLink,
		After: func(s *attach.Session, host netlink.Link, res *current.Result) error {
			if err := c.capabilities(s, host, res); err != nil {
				return err
			}
			return c.notify(pod, res)
		}})
}

// podOf is the Kubernetes pod CNI_ARGS name, or nil when they name none
// (the runtime is not Kubernetes); a namespace without a name or the
// reverse is an invalid-environment error (4).
func podOf(cniArgs string) (*gate.Pod, error) {
	a, err := cniplugin.ParsePodArgs(cniArgs)
	if err != nil {
		return nil, err
	}
	if a.K8S_POD_NAMESPACE == "" && a.K8S_POD_NAME == "" {
		return nil, nil
	}
	if a.K8S_POD_NAMESPACE == "" || a.K8S_POD_NAME == "" {
		return nil, cniplugin.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS",
			fmt.Sprintf("K8S_POD_NAMESPACE %q and K8S_POD_NAME %q: a pod needs both", a.K8S_POD_NAMESPACE, a.K8S_POD_NAME))
	}
	return &gate.Pod{Namespace: string(a.K8S_POD_NAMESPACE), Name: string(a.K8S_POD_NAME), UID: string(a.K8S_POD_UID)}, nil
}

// notify tells the agent on the policy gate the pod's addresses and waits
// until its policy is in place; with no gate or no pod it does nothing.
// The agent's refusal or silence is "try again later": the runtime
// retries ADD, which the session undoes meanwhile.
func (c *Conf) notify(pod *gate.Pod, res *current.Result) error {
	if pod == nil {
		return nil
	}
	p := *pod
	for _, ipc := range res.IPs {
		ip, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return fmt.Errorf("pod address %s is not an IP address", ipc.Address.IP)
		}
		p.IPs = append(p.IPs, ip.Unmap())
	}
	ctx, cancel := context.WithTimeout(context.Background(), gateTimeout)
	defer cancel()
	if err := gate.Notify(ctx, c.PolicyGate, p); err != nil {
		return cniplugin.Wrap(types.ErrTryAgainLater, "network policy of the pod is not in place", err)
	}
	return nil
}

// capabilities forwards the pod's host ports and shapes its traffic, in
// the session of its ADD; the shaping's ifb joins the result's
// interfaces, as the bandwidth plugin adds it.
func (c *Conf) capabilities(s *attach.Session, host netlink.Link, res *current.Result) error {
	if !c.fwd.Empty() {
		conn, err := s.NFT()
		if err != nil {
			return err
		}
		if err := c.fwd.Apply(conn, s.ID, res, s.Args.IfName); err != nil {
			return err
		}
	}
	if c.shape.None() {
		return nil
	}
	ifb, err := c.shape.Apply(s, host)
	if err != nil {
		return err
	}
	if ifb != nil {
		res.Interfaces = append(res.Interfaces, ifb)
	}
	return nil
}

// routed turns an IPAM result into the routed pod's: each address as a
// host address with the link-local gateway of its family, and the routes
// (a default route per family when IPAM gives none) through that gateway.
func routed(res *current.Result) error {
	v4, v6 := false, false
	for _, ipc := range res.IPs {
		ipc.Address = *link.HostNet(ipc.Address.IP)
		ipc.Gateway = gatewayOf(ipc.Address.IP)
		if ipc.Address.IP.To4() != nil {
			v4 = true
		} else {
			v6 = true
		}
	}
	var routes []*types.Route
	for _, r := range res.Routes {
		if (r.Dst.IP.To4() != nil && v4) || (r.Dst.IP.To4() == nil && v6) {
			routes = append(routes, &types.Route{Dst: r.Dst, GW: gatewayOf(r.Dst.IP)})
		}
	}
	if len(routes) == 0 {
		if v4 {
			routes = append(routes, &types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: Gateway4})
		}
		if v6 {
			routes = append(routes, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: Gateway6})
		}
	}
	res.Routes = routes
	return nil
}

// gatewayOnLink gives the container an on-link route to its IPv4 gateway
// (the IPv6 one is link-local, on-link by definition), so that the
// result's routes can go via it.
func gatewayOnLink(h *netlink.Handle, l netlink.Link, res *current.Result) error {
	for _, ipc := range res.IPs {
		if ipc.Address.IP.To4() == nil {
			continue
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: link.HostNet(Gateway4), Scope: netlink.SCOPE_LINK, Src: ipc.Address.IP}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("add route to gateway %s: %w", Gateway4, err)
		}
		return nil
	}
	return nil
}

func check(args *skel.CmdArgs) error {
	c, err := load(args.StdinData)
	if err != nil {
		return err
	}
	s, prev, err := attach.BeginCheck(args, &c.NetConf)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.CheckRouted(prev); err != nil {
		return err
	}
	if !c.fwd.Empty() {
		conn, err := s.NFT()
		if err != nil {
			return err
		}
		if err := c.fwd.Check(conn, s.ID, prev, args.IfName); err != nil {
			return err
		}
	}
	if c.shape.None() {
		return nil
	}
	host, err := s.Host.LinkByName(link.HostVethName(s.ID))
	if err != nil {
		return fmt.Errorf("host veth of %s: %w", s.ID, err)
	}
	return c.shape.Check(s.Host, host, s.ID)
}
