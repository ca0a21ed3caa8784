package tuning

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attach"
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
)

// Plugin returns the tuning plugin.
func Plugin() cniplugin.Plugin {
	return cniplugin.Plugin{Add: add, Del: del, Check: check, GC: gc}
}

func add(args *skel.CmdArgs) (types.Result, error) {
	c, err := load(args.StdinData, args.Args, args.IfName)
	if err != nil {
		return nil, err
	}
	if c.NetConf.PrevResult == nil {
		return nil, cniplugin.Invalid("tuning must be called as a chained plugin: no prevResult")
	}
	prev, err := c.Prev()
	if err != nil {
		return nil, err
	}
	if len(c.keys) == 0 && !c.changesLink() {
		return prev, nil
	}
	s, err := attach.Begin(args, &c.NetConf)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var l netlink.Link
	if c.changesLink() {
		if l, err = s.Cont.LinkByName(args.IfName); err != nil {
			return nil, fmt.Errorf("find %s in the pod: %w", args.IfName, err)
		}
	}
	// Read everything first: a key the kernel lacks, or will not let
	// this call write, fails before any change.
	before, err := original(s.NS, c, l)
	if err != nil {
		return nil, err
	}
	before.Attachment = s.ID.String()
	path := statePath(c.DataDir, s.ID)
	// Saved values that cannot be read are replaced, as DEL drops them.
	old, hadOld, _ := readState(path)
	orig := before
	if hadOld {
		// ADD again: the first ADD's values are the originals.
		orig = merge(old, before)
	}
	if err := writeState(path, orig); err != nil {
		return nil, err
	}
	// A failed call leaves what was there before it: the values this call
	// found, and the saved values of an earlier ADD.
	s.OnFailure(func() {
		if restore(s.NS, s.Cont, args.IfName, before) != nil {
			return
		}
		if hadOld {
			_ = writeState(path, old)
		} else {
			_ = removeState(path)
		}
	})
	if err := apply(s, c, l); err != nil {
		return nil, err
	}
	if c.mac != nil {
		for _, intf := range prev.Interfaces {
			if intf.Name == args.IfName && intf.Sandbox != "" {
				intf.Mac = c.mac.String()
			}
		}
	}
	s.Done()
	return prev, nil
}

// original reads the current values of what the configuration changes.
func original(ns *netns.NS, c *Conf, l netlink.Link) (saved, error) {
	var o saved
	err := ns.Do(func() error {
		for _, k := range c.keys {
			v, err := readSysctl(k.path)
			if err != nil {
				return cniplugin.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("sysctl %q cannot be read in the pod's namespace", k.key), err.Error())
			}
			if err := writable(k.path); err != nil {
				return cniplugin.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("sysctl %q cannot be written in the pod's namespace", k.key), err.Error())
			}
			o.Sysctls = append(o.Sysctls, Sysctl{Key: k.path, Value: v})
		}
		return nil
	})
	if err != nil || l == nil {
		return o, err
	}
	a := l.Attrs()
	if c.mac != nil {
		o.Mac = a.HardwareAddr.String()
	}
	if c.MTU != 0 {
		o.MTU = a.MTU
	}
	if c.Promisc {
		on := a.Promisc != 0
		o.Promisc = &on
	}
	if c.Allmulti != nil {
		on := a.RawFlags&unix.IFF_ALLMULTI != 0
		o.Allmulti = &on
	}
	if c.TxQLen != nil {
		q := a.TxQLen
		o.TxQLen = &q
	}
	return o, nil
}

// merge keeps the values first saved and adds what only now is changed.
func merge(old, now saved) saved {
	have := map[string]bool{}
	for _, kv := range old.Sysctls {
		have[kv.Key] = true
	}
	for _, kv := range now.Sysctls {
		if !have[kv.Key] {
			old.Sysctls = append(old.Sysctls, kv)
		}
	}
	if old.Mac == "" {
		old.Mac = now.Mac
	}
	if old.MTU == 0 {
		old.MTU = now.MTU
	}
	if old.Promisc == nil {
		old.Promisc = now.Promisc
	}
	if old.Allmulti == nil {
		old.Allmulti = now.Allmulti
	}
	if old.TxQLen == nil {
		old.TxQLen = now.TxQLen
	}
	return old
}

// apply makes the configured changes.
func apply(s *attach.Session, c *Conf, l netlink.Link) error {
	err := s.NS.Do(func() error {
		for _, k := range c.keys {
			if err := link.Sysctl(nil, k.path, k.value); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || l == nil {
		return err
	}
	return setLink(s.Cont, l, linkValues{
		mac: c.mac, mtu: c.MTU, promisc: boolPtr(c.Promisc), allmulti: c.Allmulti, txQLen: c.TxQLen,
	})
}

func boolPtr(b bool) *bool {
	if !b {
		return nil
	}
	return &b
}

// linkValues are interface attributes to set; zero values are left alone.
type linkValues struct {
	mac      []byte
	mtu      int
	promisc  *bool
	allmulti *bool
	txQLen   *int
}

func setLink(h *netlink.Handle, l netlink.Link, v linkValues) error {
	name := l.Attrs().Name
	if v.mtu != 0 {
		if err := h.LinkSetMTU(l, v.mtu); err != nil {
			return fmt.Errorf("set mtu %d on %s: %w", v.mtu, name, err)
		}
	}
	if v.mac != nil {
		if err := h.LinkSetHardwareAddr(l, v.mac); err != nil {
			return fmt.Errorf("set mac on %s: %w", name, err)
		}
	}
	if v.promisc != nil {
		f := h.SetPromiscOff
		if *v.promisc {
			f = h.SetPromiscOn
		}
		if err := f(l); err != nil {
			return fmt.Errorf("set promisc %v on %s: %w", *v.promisc, name, err)
		}
	}
	if v.allmulti != nil {
		f := h.LinkSetAllmulticastOff
		if *v.allmulti {
			f = h.LinkSetAllmulticastOn
		}
		if err := f(l); err != nil {
			return fmt.Errorf("set allmulti %v on %s: %w", *v.allmulti, name, err)
		}
	}
	if v.txQLen != nil {
		if err := h.LinkSetTxQLen(l, *v.txQLen); err != nil {
			return fmt.Errorf("set txqueuelen %d on %s: %w", *v.txQLen, name, err)
		}
	}
	return nil
}

// restore puts saved values back: sysctls in reverse order (a key gone
// with its interface is skipped), then the interface's attributes if the
// interface is still there.
func restore(ns *netns.NS, h *netlink.Handle, ifName string, o saved) error {
	var errs []error
	err := ns.Do(func() error {
		for i := len(o.Sysctls) - 1; i >= 0; i-- {
			kv := o.Sysctls[i]
			if _, err := os.Stat(filepath.Join("/proc/sys", kv.Key)); errors.Is(err, fs.ErrNotExist) {
				continue
			}
			errs = append(errs, link.Sysctl(nil, kv.Key, kv.Value))
		}
		return nil
	})
	errs = append(errs, err)
	l, err := h.LinkByName(ifName)
	if err != nil {
		return errors.Join(errs...)
	}
	v := linkValues{mtu: o.MTU, promisc: o.Promisc, allmulti: o.Allmulti, txQLen: o.TxQLen}
	if o.Mac != "" {
		mac, err := parseMAC(o.Mac)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		v.mac = mac
	}
	errs = append(errs, setLink(h, l, v))
	return errors.Join(errs...)
}

// del puts the saved values back while the pod's namespace exists, and
// forgets them in any case.
func del(args *skel.CmdArgs) error {
	c, err := decode(args.StdinData)
	if err != nil {
		return err
	}
	if !safeName(args.ContainerID) || !safeName(args.IfName) {
		return nil // nothing can have been saved under such names
	}
	id := cniplugin.AttachmentOf(c.Name, args)
	path := statePath(c.DataDir, id)
	o, ok, err := readState(path)
	if err != nil {
		// Unreadable saved values cannot be restored: drop them.
		return removeState(path)
	}
	if !ok {
		return nil
	}
	if args.Netns != "" {
		ns, err := netns.Open(args.Netns)
		switch {
		case err == nil:
			defer ns.Close()
			h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
			if err != nil {
				return fmt.Errorf("netlink in %s: %w", args.Netns, err)
			}
			defer h.Close()
			if err := restore(ns, h, args.IfName, o); err != nil {
				return fmt.Errorf("restore %s: %w", id, err)
			}
		case !cniplugin.IsGone(err):
			return err
		}
	}
	return removeState(path)
}

// gc forgets the saved values of attachments that are no longer valid.
func gc(args *skel.CmdArgs) error {
	c, err := decode(args.StdinData)
	if err != nil {
		return err
	}
	return gcState(c.DataDir, c.Name, func(a attachment.ID) bool { return c.KeepsAttachment(a) })
}

// check verifies every configured value is in force.
func check(args *skel.CmdArgs) error {
	c, err := load(args.StdinData, args.Args, args.IfName)
	if err != nil {
		return err
	}
	if _, err := attach.CheckPrev(&c.NetConf); err != nil {
		return err
	}
	s, err := attach.Begin(args, &c.NetConf)
	if err != nil {
		return err
	}
	s.Done()
	defer s.Close()
	err = s.NS.Do(func() error {
		for _, k := range c.keys {
			v, err := readSysctl(k.path)
			if err != nil {
				return err
			}
			if strings.Join(strings.Fields(v), " ") != strings.Join(strings.Fields(k.value), " ") {
				return fmt.Errorf("sysctl %s is %q, configured %q", k.key, v, k.value)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	l, err := s.Cont.LinkByName(args.IfName)
	if err != nil {
		return fmt.Errorf("find %s in the pod: %w", args.IfName, err)
	}
	a := l.Attrs()
	switch {
	case c.mac != nil && a.HardwareAddr.String() != c.mac.String():
		return fmt.Errorf("%s has mac %s, configured %s", args.IfName, a.HardwareAddr, c.mac)
	case c.MTU != 0 && a.MTU != c.MTU:
		return fmt.Errorf("%s has mtu %d, configured %d", args.IfName, a.MTU, c.MTU)
	case (a.Promisc != 0) != c.Promisc:
		return fmt.Errorf("%s has promisc %v, configured %v", args.IfName, a.Promisc != 0, c.Promisc)
	case c.Allmulti != nil && (a.RawFlags&unix.IFF_ALLMULTI != 0) != *c.Allmulti:
		return fmt.Errorf("%s has allmulti %v, configured %v", args.IfName, !*c.Allmulti, *c.Allmulti)
	case c.TxQLen != nil && a.TxQLen != *c.TxQLen:
		return fmt.Errorf("%s has txqueuelen %d, configured %d", args.IfName, a.TxQLen, *c.TxQLen)
	}
	return nil
}

// writable tells whether a sysctl may be written, without writing it: a
// sysctl acts only on write(2), so opening it for writing changes nothing,
// and the kernel refuses the open of a read-only one (EACCES, root
// included) or of one under a read-only mount (EROFS).
func writable(path string) error {
	f, err := os.OpenFile(filepath.Join("/proc/sys", path), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", path))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
