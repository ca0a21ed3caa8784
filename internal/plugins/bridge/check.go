package bridge

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/attach"
	"github.com/podnet/podnet/internal/link"
)

// check verifies what ADD built is still there: the bridge, the container
// interface and its host peer on the bridge, addresses, routes, podnet's
// rules, and the IPAM allocation.
func check(args *skel.CmdArgs) error {
	c, err := load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	s, prev, err := attach.BeginCheck(args, &c.NetConf)
	if err != nil {
		return err
	}
	defer s.Close()
	brLink, err := s.Host.LinkByName(c.BrName)
	if err != nil {
		return fmt.Errorf("bridge %s not found: %w", c.BrName, err)
	}
	if _, ok := brLink.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s is not a bridge", c.BrName)
	}
	if (brLink.Attrs().Promisc != 0) != c.PromiscMode {
		return fmt.Errorf("bridge %s promiscuous mode is %v, config says %v", c.BrName, brLink.Attrs().Promisc != 0, c.PromiscMode)
	}
	cont, host, _, err := s.CheckVeth(prev)
	if err != nil {
		return err
	}
	if host.Attrs().MasterIndex != brLink.Attrs().Index {
		return fmt.Errorf("host veth %s is not a port of %s", host.Attrs().Name, c.BrName)
	}
	return checkRules(s, c, prev, cont)
}

func checkRules(s *attach.Session, c *Conf, prev *current.Result, cont netlink.Link) error {
	if !c.IPMasq && !c.MacSpoofChk {
		return nil
	}
	n, err := s.NFT()
	if err != nil {
		return err
	}
	if c.IPMasq {
		if err := n.CheckMasquerade(s.ID, attach.Networks(prev.IPs)); err != nil {
			return err
		}
	}
	if c.MacSpoofChk {
		if err := n.CheckMacSpoofCheck(s.ID, link.HostVethName(s.ID), cont.Attrs().HardwareAddr); err != nil {
			return err
		}
	}
	return nil
}
