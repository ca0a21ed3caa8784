// Package link is the kernel plumbing the interface plugins share: veth
// pairs created with their peer already in the other namespace, interface
// addressing and routes from a CNI result, IPv6 DAD handling, sysctls, and
// the identity podnet stamps on the host-side links it creates.
package link

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/netns"
)

// HostPrefix starts the name of every host-side link podnet creates.
const HostPrefix = "pn"

// aliasPrefix starts the IFLA_IFALIAS podnet stamps on its host links.
const aliasPrefix = "podnet:"

// IfbPrefix starts the name of the ifb devices podnet creates for egress
// shaping; it starts with HostPrefix, so they are host links like the veths.
const IfbPrefix = HostPrefix + "i"

// OwnedName is the name of a host link of an attachment: prefix followed
// by a hash of the attachment identity, so DEL and GC find it without the
// container. prefix must be at most 3 bytes to fit IFNAMSIZ.
func OwnedName(prefix string, a attachment.ID) string {
	sum := sha256.Sum256([]byte(a.String()))
	return prefix + hex.EncodeToString(sum[:6])
}

// HostVethName is the host-side name of an attachment's veth.
func HostVethName(a attachment.ID) string { return OwnedName(HostPrefix, a) }

// IfbName is the name of an attachment's ifb device.
func IfbName(a attachment.ID) string { return OwnedName(IfbPrefix, a) }

// Alias is the interface alias that records which attachment a host link
// belongs to.
func Alias(a attachment.ID) string { return aliasPrefix + a.String() }

// attachmentOfAlias parses an alias written by Alias.
func attachmentOfAlias(alias string) (attachment.ID, bool) {
	s, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return attachment.ID{}, false
	}
	a, err := attachment.Parse(s)
	return a, err == nil
}

// Veth is a veth pair between the host and a container.
type Veth struct {
	Host      netlink.Link
	Container netlink.Link
}

// VethSpec describes the pair to create.
type VethSpec struct {
	Attachment attachment.ID
	MTU        int
	// MAC is the container side's hardware address; nil lets the kernel pick.
	MAC net.HardwareAddr
}

// CreateVeth creates the pair from the host side with the container end
// placed directly into the container namespace (no move, no name clash in
// the host), stamps the host end with the attachment identity and sets it
// up. host is a handle in the host namespace, cont one in the container's.
func CreateVeth(host, cont *netlink.Handle, contNS *netns.NS, spec VethSpec) (*Veth, error) {
	name := HostVethName(spec.Attachment)
	v := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:   name,
			MTU:    spec.MTU,
			TxQLen: -1,
			Flags:  net.FlagUp,
		},
		PeerName:         spec.Attachment.IfName,
		PeerHardwareAddr: spec.MAC,
		PeerNamespace:    netlink.NsFd(contNS.Fd()),
	}
	h, err := CreateOwned(host, v, spec.Attachment)
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create veth %s/%s: a link of that name already exists (in the host or the container)", name, spec.Attachment.IfName)
		}
		return nil, fmt.Errorf("veth %s/%s: %w", name, spec.Attachment.IfName, err)
	}
	c, err := cont.LinkByName(spec.Attachment.IfName)
	if err != nil {
		_ = host.LinkDel(h)
		return nil, fmt.Errorf("find new veth %s in container: %w", spec.Attachment.IfName, err)
	}
	return &Veth{Host: h, Container: c}, nil
}

// DelContainerLink deletes the container's interface (and with a veth, its
// host peer) and returns the addresses it had. A missing namespace or link
// is not an error: DEL may run twice or after the container died.
func DelContainerLink(netnsPath, ifName string) ([]*net.IPNet, error) {
	if netnsPath == "" {
		return nil, nil
	}
	ns, err := netns.Open(netnsPath)
	if err != nil {
		if errors.Is(err, netns.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", netnsPath, err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("find %s: %w", ifName, err)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", ifName, err)
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return nil, fmt.Errorf("delete %s: %w", ifName, err)
	}
	var out []*net.IPNet
	for _, a := range addrs {
		if a.IP.IsGlobalUnicast() {
			out = append(out, a.IPNet)
		}
	}
	return out, nil
}

// DelHostLink deletes an attachment's host-side veth if it is still there.
func DelHostLink(h *netlink.Handle, a attachment.ID) error {
	return DelOwnedLink(h, HostVethName(a), a)
}

// DelOwnedLink deletes the host link of that name if it is still there and
// its alias says it belongs to the attachment, or it has none (an ADD of
// the attachment died before stamping it: the name is the identity's).
func DelOwnedLink(h *netlink.Handle, name string, a attachment.ID) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return nil
	}
	if l.Attrs().Alias != Alias(a) && !isHalfMade(l) {
		return nil
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// Owned is a host link and the attachment its alias names.
type Owned struct {
	Attachment attachment.ID
	Link       netlink.Link
}

// HostLinks returns the host-side links (veths, ifbs) of a network's
// attachments with the attachment each belongs to.
func HostLinks(h *netlink.Handle, network string) ([]Owned, error) {
	return OwnedLinks(h, HostPrefix, network)
}

// OwnedLinks returns the links whose name starts with prefix and whose
// alias names an attachment of the network. An attachment may own several
// (its veth and its ifb share the alias).
func OwnedLinks(h *netlink.Handle, prefix, network string) ([]Owned, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []Owned
	for _, l := range links {
		if !strings.HasPrefix(l.Attrs().Name, prefix) {
			continue
		}
		if a, ok := attachmentOfAlias(l.Attrs().Alias); ok && a.Network == network {
			out = append(out, Owned{Attachment: a, Link: l})
		}
	}
	return out, nil
}

// GCHostLinks deletes host-side links of a network's attachments for which
// keep returns false.
func GCHostLinks(h *netlink.Handle, network string, keep func(attachment.ID) bool) error {
	return GCLinks(h, HostPrefix, network, keep)
}

// GCLinks deletes the links whose name starts with prefix and whose alias
// names an attachment of the network for which keep returns false, and
// the podnet links of that prefix left without an alias by a plugin that
// died creating them (of any network: none can be valid).
func GCLinks(h *netlink.Handle, prefix, network string, keep func(attachment.ID) bool) error {
	release, err := lockCreation(unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer release()
	links, err := OwnedLinks(h, prefix, network)
	if err != nil {
		return err
	}
	errs := []error{gcHalfMade(h, prefix)}
	for _, o := range links {
		if keep(o.Attachment) {
			continue
		}
		if err := h.LinkDel(o.Link); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %s: %w", o.Link.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}
