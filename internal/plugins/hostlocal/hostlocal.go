// Package hostlocal is the host-local IPAM plugin: addresses from range
// sets, allocated in the reference's order, in a crash-safe store that by
// default lives under /run (see internal/ipam).
package hostlocal

import (
	"fmt"
	"net"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/ipam"
)

// Plugin returns the host-local plugin.
func Plugin() cniplugin.Plugin {
	return cniplugin.Plugin{Add: add, Del: del, Check: check, GC: gc, Status: status}
}

func owner(args *skel.CmdArgs) ipam.Owner {
	return ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
}

func add(args *skel.CmdArgs) (types.Result, error) {
	c, err := load(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	n := c.IPAM
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: n.Routes}
	if n.ResolvConf != "" {
		dns, err := parseResolvConf(n.ResolvConf)
		if err != nil {
			return nil, err
		}
		res.DNS = *dns
	}
	store, err := ipam.Open(n.DataDir, c.Name)
	if err != nil {
		return nil, err
	}
	defer store.Close()

	o := owner(args)
	held, _ := store.Addresses(o)
	requested := append([]net.IP(nil), n.requested...)
	var got []net.IP
	fail := func(err error) (types.Result, error) {
		// Release what this call reserved; keep what the owner held before.
		for _, ip := range got {
			if !contains(held, ip) {
				_ = removeIfOwned(store, ip, o)
			}
		}
		return nil, err
	}
	for i, set := range n.Ranges {
		var want net.IP
		for j, ip := range requested {
			if set.Contains(ip) {
				want = ip
				requested = append(requested[:j], requested[j+1:]...)
				break
			}
		}
		a := &ipam.Allocator{Set: set, Index: i, Store: store}
		addr, gw, err := a.Get(o, want, held)
		if err != nil {
			return fail(fmt.Errorf("failed to allocate for range %d: %w", i, err))
		}
		got = append(got, addr.IP)
		res.IPs = append(res.IPs, &current.IPConfig{Address: *addr, Gateway: gw})
	}
	if len(requested) > 0 {
		return fail(cniplugin.Invalid("failed to allocate all requested IPs: %v", requested))
	}
	if err := store.SetAddresses(o, union(held, got)); err != nil {
		return fail(err)
	}
	return res, nil
}

func contains(ips []net.IP, ip net.IP) bool {
	for _, x := range ips {
		if x.Equal(ip) {
			return true
		}
	}
	return false
}

func union(a, b []net.IP) []net.IP {
	out := append([]net.IP(nil), a...)
	for _, ip := range b {
		if !contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

func removeIfOwned(s *ipam.Store, ip net.IP, o ipam.Owner) error {
	if cur, ok := s.OwnerOf(ip); ok && cur == o {
		return s.Unreserve(ip)
	}
	return nil
}

func del(args *skel.CmdArgs) error {
	c, err := decode(args.StdinData)
	if err != nil {
		return err
	}
	store, err := ipam.Open(c.IPAM.DataDir, c.Name)
	if err != nil {
		return err
	}
	defer store.Close()
	return store.Release(owner(args))
}

// check succeeds when the attachment holds an address in every range set,
// as the reference's CHECK requires.
func check(args *skel.CmdArgs) error {
	c, err := load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	store, err := ipam.Open(c.IPAM.DataDir, c.Name)
	if err != nil {
		return err
	}
	defer store.Close()
	o := owner(args)
	held, _ := store.Addresses(o)
	for i, set := range c.IPAM.Ranges {
		found := false
		for _, ip := range held {
			if cur, ok := store.OwnerOf(ip); ok && cur == o && set.Contains(ip) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("host-local: failed to find address of container %s in range set %d", args.ContainerID, i)
		}
	}
	return nil
}

func gc(args *skel.CmdArgs) error {
	c, err := decode(args.StdinData)
	if err != nil {
		return err
	}
	store, err := ipam.Open(c.IPAM.DataDir, c.Name)
	if err != nil {
		return err
	}
	defer store.Close()
	return store.GC(func(o ipam.Owner) bool {
		return c.KeepsAttachment(attachment.ID{Network: c.Name, ContainerID: o.ContainerID, IfName: o.IfName})
	})
}

// status reports 50 when the store cannot be written or a range set has
// no free address left.
func status(args *skel.CmdArgs) error {
	c, err := load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	store, err := ipam.Open(c.IPAM.DataDir, c.Name)
	if err != nil {
		return cniplugin.NewError(cniplugin.ErrPluginNotAvailable, "IPAM store is not writable", err.Error())
	}
	defer store.Close()
	for i, set := range c.IPAM.Ranges {
		a := &ipam.Allocator{Set: set, Index: i, Store: store}
		if !a.Free() {
			return cniplugin.NewError(cniplugin.ErrPluginNotAvailable, "no free addresses", (&ipam.ErrExhausted{Set: set}).Error())
		}
	}
	return nil
}
