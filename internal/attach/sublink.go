package attach

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CreateInContainer creates l, a link named after the container interface
// (args.IfName), through h: the host's handle with l's Namespace set to the
// container's namespace (the kernel then creates it there directly, so its
// name never meets the host's links), or the container's own handle. It
// returns the link as the container sees it; the link is deleted again if
// the session fails. Plugins whose container interface is not a veth
// (macvlan, ipvlan) create it through here.
func (s *Session) CreateInContainer(h *netlink.Handle, l netlink.Link) (netlink.Link, error) {
	name := l.Attrs().Name
	if err := h.LinkAdd(l); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create %s %s: a link of that name already exists in the container", l.Type(), name)
		}
		if errors.Is(err, unix.EOPNOTSUPP) {
			return nil, fmt.Errorf("create %s %s: the kernel does not support %s links (module not available): %w", l.Type(), name, l.Type(), err)
		}
		return nil, fmt.Errorf("create %s %s: %w", l.Type(), name, err)
	}
	s.OnFailure(func() {
		if c, err := s.Cont.LinkByName(name); err == nil {
			_ = s.Cont.LinkDel(c)
		}
	})
	c, err := s.Cont.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find new %s %s in container: %w", l.Type(), name, err)
	}
	return c, nil
}
