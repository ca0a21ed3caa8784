package link

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The kernel ignores an alias in a create request, so a host link exists
// for a moment without the alias that names its attachment; a plugin
// killed in that moment leaves a link no DEL or GC could attribute. The
// creation lock closes that gap: a flock on the network namespace the
// plugin runs in (the node's, by the CNI contract), held shared by every
// creator from the link's creation until its alias is set, and exclusive
// by GC while it removes podnet-named links that have no alias. The kernel
// drops the lock of a process that dies, so such a link seen under the
// exclusive lock was left by a process that died in between.

// halfMade matches the names of podnet's host links (veths, ifbs).
var halfMade = regexp.MustCompile(`^` + HostPrefix + `i?[0-9a-f]{12}$`)

// isHalfMade tells whether l is a podnet host link without its alias.
func isHalfMade(l netlink.Link) bool {
	return l.Attrs().Alias == "" && halfMade.MatchString(l.Attrs().Name) && (l.Type() == "veth" || l.Type() == "ifb")
}

// lockCreation takes the creation lock (unix.LOCK_SH or unix.LOCK_EX);
// release drops it.
func lockCreation(how int) (release func(), err error) {
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("open own network namespace: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock host link creation: %w", err)
	}
	return func() { f.Close() }, nil
}

// CreateOwned creates the host link l (its name one of OwnedName's) and
// stamps it with the attachment's alias, under the creation lock, and
// returns it as the kernel has it. Creation errors wrap the kernel's
// (unix.EEXIST for a name taken); on a later failure the link is deleted.
func CreateOwned(h *netlink.Handle, l netlink.Link, a attachment.ID) (netlink.Link, error) {
	release, err := lockCreation(unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer release()
	name := l.Attrs().Name
	if err := h.LinkAdd(l); err != nil {
		return nil, fmt.Errorf("create %s %s: %w", l.Type(), name, err)
	}
	got, err := h.LinkByName(name)
	if err != nil {
		_ = h.LinkDel(l)
		return nil, fmt.Errorf("find new link %s: %w", name, err)
	}
	if err := h.LinkSetAlias(got, Alias(a)); err != nil {
		_ = h.LinkDel(got)
		return nil, fmt.Errorf("set alias of %s: %w", name, err)
	}
	got.Attrs().Alias = Alias(a)
	return got, nil
}

// gcHalfMade deletes the podnet host links whose name starts with prefix
// and that have no alias; the caller holds the creation lock exclusive.
func gcHalfMade(h *netlink.Handle, prefix string) error {
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if !strings.HasPrefix(l.Attrs().Name, prefix) || !isHalfMade(l) {
			continue
		}
		if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %s (no alias): %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}
