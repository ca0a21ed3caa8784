package link

import (
	"fmt"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
)

// HostPeer returns the host-side end of the container's veth ifName (cont
// is a handle in the container's namespace, host one in the host's) and
// checks that the previous result lists it as a host interface (one
// without a sandbox), as chained plugins find it after any veth plugin —
// podnet's or the reference's bridge and ptp.
func HostPeer(host, cont *netlink.Handle, ifName string, prev *current.Result) (netlink.Link, error) {
	c, err := cont.LinkByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("find container interface %s: %w", ifName, err)
	}
	if _, ok := c.(*netlink.Veth); !ok || c.Attrs().ParentIndex <= 0 {
		return nil, fmt.Errorf("container interface %s is a %s, not one end of a veth pair", ifName, c.Type())
	}
	h, err := host.LinkByIndex(c.Attrs().ParentIndex)
	if err != nil {
		return nil, fmt.Errorf("veth peer of %s (index %d) is not in the host namespace: %w", ifName, c.Attrs().ParentIndex, err)
	}
	if _, ok := h.(*netlink.Veth); !ok || h.Attrs().ParentIndex != c.Attrs().Index {
		return nil, fmt.Errorf("veth peer of %s (index %d) is not in the host namespace", ifName, c.Attrs().ParentIndex)
	}
	for _, intf := range prev.Interfaces {
		if intf.Sandbox == "" && intf.Name == h.Attrs().Name {
			return h, nil
		}
	}
	return nil, fmt.Errorf("prevResult lists no host interface %s (the veth peer of %s)", h.Attrs().Name, ifName)
}
