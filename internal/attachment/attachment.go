// Package attachment is the identity of one attachment of a container to a
// network: every allocation, link and nftables rule podnet makes carries it,
// so DEL and GC find them even when the container's network namespace is
// gone. It depends on nothing but the standard library, so the kernel
// plumbing (link, ipam, nft) can name attachments without speaking CNI.
package attachment

import (
	"fmt"
	"strings"
)

// ID identifies an attachment: the network's name, the container's ID and
// the interface name inside the container.
type ID struct {
	Network     string
	ContainerID string
	IfName      string
}

// MaxLen is the longest identity (String) that fits everything carrying
// it: a host link's alias, "podnet:" and the identity, holds at most 255
// bytes (IFALIASZ less its NUL), an nftables rule comment 253, and the
// file names of the IPAM index and tuning's saved values
// (<containerID>@<ifname> and a suffix) at most 255 (NAME_MAX). An
// attachment with a longer identity can never be created.
const MaxLen = 248

// String is the attachment's canonical text: network/containerID/ifname.
func (a ID) String() string {
	return a.Network + "/" + a.ContainerID + "/" + a.IfName
}

// Parse is the inverse of String.
func Parse(s string) (ID, error) {
	parts := strings.SplitN(s, "/", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return ID{}, fmt.Errorf("malformed attachment %q", s)
	}
	return ID{Network: parts[0], ContainerID: parts[1], IfName: parts[2]}, nil
}
