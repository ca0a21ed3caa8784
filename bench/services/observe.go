package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/services/dataplane"
)

// observer reads what a proxy programmed in its node's kernel.
type observer interface {
	// clusterIPs are the ClusterIPs whose TCP port 80 is programmed.
	clusterIPs() (map[netip.Addr]bool, error)
	// hasEndpoint reports whether traffic may be sent to ip.
	hasEndpoint(ip netip.Addr) (bool, error)
}

// nftObserver reads an nftables proxy's table through netlink: its
// verdict map of address . protocol . port (podnet's and kube-proxy's
// share that key), and a proxy-specific endpoint test.
type nftObserver struct {
	ns          *netns.NS
	family      nftables.TableFamily
	table, smap string
	endpoint    func(c *nftables.Conn, t *nftables.Table, ip netip.Addr) (bool, error)
}

// podnetObserver finds an endpoint among the values (address . port) of
// podnet's endpoint maps: @service-endpoints4, of the services without a
// chain of their own, and @endpoints4-0 … @endpoints4-63.
func podnetObserver(ns *netns.NS) observer {
	return nftObserver{ns: ns, family: nftables.TableFamilyINet, table: dataplane.TableName, smap: "service-ips4",
		endpoint: func(c *nftables.Conn, t *nftables.Table, ip netip.Addr) (bool, error) {
			sets, err := c.GetSets(t)
			if err != nil {
				return false, err
			}
			want := ip.AsSlice()
			for _, s := range sets {
				if s.Name != "service-endpoints4" && !strings.HasPrefix(s.Name, "endpoints4-") {
					continue
				}
				els, err := c.GetSetElements(s)
				if err != nil {
					return false, err
				}
				for _, e := range els {
					if bytes.HasPrefix(e.Val, want) {
						return true, nil
					}
				}
			}
			return false, nil
		}}
}

// kubeProxyNFTObserver reads kube-proxy's table of IPv4 (family ip) and
// finds an endpoint by its chain, which kube-proxy names
// endpoint-HASH-NS/NAME/PROTO/PORTNAME__IP/PORT.
func kubeProxyNFTObserver(ns *netns.NS) observer {
	return nftObserver{ns: ns, family: nftables.TableFamilyIPv4, table: "kube-proxy", smap: "service-ips",
		endpoint: func(c *nftables.Conn, t *nftables.Table, ip netip.Addr) (bool, error) {
			chains, err := c.ListChainsOfTableFamily(t.Family)
			if err != nil {
				return false, err
			}
			want := "__" + ip.String() + "/"
			for _, ch := range chains {
				if ch.Table.Name == t.Name && strings.Contains(ch.Name, want) {
					return true, nil
				}
			}
			return false, nil
		}}
}

func (o nftObserver) conn() (*nftables.Conn, *nftables.Table, error) {
	c, err := nftables.New(nftables.WithNetNSFd(o.ns.Fd()))
	if err != nil {
		return nil, nil, fmt.Errorf("nftables: %w", err)
	}
	return c, &nftables.Table{Family: o.family, Name: o.table}, nil
}

func (o nftObserver) clusterIPs() (map[netip.Addr]bool, error) {
	c, t, err := o.conn()
	if err != nil {
		return nil, err
	}
	s, err := c.GetSetByName(t, o.smap)
	if err != nil {
		if isNotFound(err) {
			return nil, nil // not created yet
		}
		return nil, fmt.Errorf("%s %s: %w", o.table, o.smap, err)
	}
	els, err := c.GetSetElements(s)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", o.table, o.smap, err)
	}
	out := map[netip.Addr]bool{}
	for _, e := range els {
		// ipv4_addr . inet_proto . inet_service, each padded to 4 bytes.
		if len(e.Key) < 10 || e.Key[4] != unix.IPPROTO_TCP || binary.BigEndian.Uint16(e.Key[8:10]) != servicePort {
			continue
		}
		out[netip.AddrFrom4([4]byte(e.Key[:4]))] = true
	}
	return out, nil
}

func (o nftObserver) hasEndpoint(ip netip.Addr) (bool, error) {
	c, t, err := o.conn()
	if err != nil {
		return false, err
	}
	ok, err := o.endpoint(c, t, ip)
	if err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("%s: endpoint %s: %w", o.table, ip, err)
	}
	return ok, nil
}

func isNotFound(err error) bool {
	return strings.Contains(err.Error(), "no such file or directory")
}

// iptablesObserver reads kube-proxy's iptables rules with iptables-save
// in the node's namespace (an observer may exec tools).
type iptablesObserver struct{ ns *netns.NS }

func (o iptablesObserver) save() (string, error) {
	var out []byte
	err := o.ns.Do(func() error {
		var err error
		out, err = exec.Command("iptables-save", "-t", "nat").Output()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("iptables-save: %w", err)
	}
	return string(out), nil
}

func (o iptablesObserver) clusterIPs() (map[netip.Addr]bool, error) {
	s, err := o.save()
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]bool{}
	port := fmt.Sprintf("--dport %d ", servicePort)
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(line, "-A KUBE-SERVICES -d ") || !strings.Contains(line, "-p tcp") || !strings.Contains(line, port) {
			continue
		}
		addr, _, _ := strings.Cut(strings.TrimPrefix(line, "-A KUBE-SERVICES -d "), "/")
		if ip, err := netip.ParseAddr(addr); err == nil {
			out[ip] = true
		}
	}
	return out, nil
}

func (o iptablesObserver) hasEndpoint(ip netip.Addr) (bool, error) {
	s, err := o.save()
	if err != nil {
		return false, err
	}
	return strings.Contains(s, fmt.Sprintf("--to-destination %s:%d", ip, targetPort)), nil
}
