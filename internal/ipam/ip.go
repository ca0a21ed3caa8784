package ipam

import (
	"bytes"
	"fmt"
	"net"
)

// Canonical returns ip in its 4-byte form when it is IPv4 and 16-byte
// otherwise, or an error when it is not an address.
func Canonical(ip net.IP) (net.IP, error) {
	if v4 := ip.To4(); v4 != nil {
		return v4, nil
	}
	if v6 := ip.To16(); v6 != nil {
		return v6, nil
	}
	return nil, fmt.Errorf("%q is not an IP address", ip)
}

// NextIP returns ip + 1 (wrapping at the end of the family).
func NextIP(ip net.IP) net.IP {
	out := append(net.IP(nil), ip...)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out
}

// Cmp compares two addresses of the same length.
func Cmp(a, b net.IP) int { return bytes.Compare(a, b) }

// lastIP is the last address of a subnet, the broadcast excluded for IPv4.
func lastIP(n net.IPNet) net.IP {
	end := make(net.IP, len(n.IP))
	for i := range n.IP {
		end[i] = n.IP[i] | ^n.Mask[i]
	}
	if len(end) == net.IPv4len {
		end[3]--
	}
	return end
}
