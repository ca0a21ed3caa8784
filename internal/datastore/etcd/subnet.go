package etcd

import (
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"

	"github.com/podnet/podnet/internal/cluster"
)

// ErrExhausted is wrapped by Acquire's error when a cluster CIDR has no
// free node subnet left.
var ErrExhausted = errors.New("no free node subnet")

// pool is the node subnets of one address family: the cluster CIDR cut into
// subnets of one prefix length.
type pool struct {
	cidr *net.IPNet
	size int // prefix length of a node subnet
}

// pools are the families a cluster config leases: IPv4 first, then IPv6.
func pools(c cluster.Config) (v4, v6 *pool) {
	if c.ClusterCIDR != "" {
		_, n, _ := net.ParseCIDR(c.ClusterCIDR)
		v4 = &pool{cidr: n, size: c.SubnetSize}
	}
	if c.ClusterCIDR6 != "" {
		_, n, _ := net.ParseCIDR(c.ClusterCIDR6)
		v6 = &pool{cidr: n, size: c.SubnetSize6}
	}
	return v4, v6
}

// count is the number of subnets, capped at 1<<62.
func (p *pool) count() uint64 {
	ones, _ := p.cidr.Mask.Size()
	return 1 << min(p.size-ones, 62)
}

// nth is the i-th subnet in address order.
func (p *pool) nth(i uint64) *net.IPNet {
	bits := len(p.cidr.IP) * 8
	base := new(big.Int).SetBytes(p.cidr.IP)
	off := new(big.Int).Lsh(new(big.Int).SetUint64(i), uint(bits-p.size))
	ip := make(net.IP, len(p.cidr.IP))
	new(big.Int).Add(base, off).FillBytes(ip)
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(p.size, bits)}
}

// contains reports whether n is one of the pool's subnets.
func (p *pool) contains(n *net.IPNet) bool {
	if n == nil {
		return false
	}
	ones, bits := n.Mask.Size()
	_, pbits := p.cidr.Mask.Size()
	return ones == p.size && bits == pbits && p.cidr.Contains(n.IP) && n.IP.Mask(n.Mask).Equal(n.IP)
}

// firstFree is the first subnet whose key is not in taken; it looks at no
// more than len(taken)+1 subnets.
func (p *pool) firstFree(taken map[string]bool) (*net.IPNet, error) {
	n := p.count()
	for i := uint64(0); i < n; i++ {
		sn := p.nth(i)
		if !taken[subnetKeyName(sn)] {
			return sn, nil
		}
	}
	return nil, fmt.Errorf("%w: all %d /%d subnets of %s are leased", ErrExhausted, n, p.size, p.cidr)
}

// subnetKeyName is a subnet's name in a claim key: its CIDR with "/"
// replaced by "_".
func subnetKeyName(n *net.IPNet) string {
	return strings.Replace(n.String(), "/", "_", 1)
}

// parseSubnetKeyName is the inverse of subnetKeyName.
func parseSubnetKeyName(s string) (*net.IPNet, error) {
	_, n, err := net.ParseCIDR(strings.Replace(s, "_", "/", 1))
	return n, err
}
