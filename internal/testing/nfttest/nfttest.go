// Package nfttest holds the helpers the nft packages' tests share:
// throwaway network namespaces, connections in them and the nft tool's
// view of their ruleset. Tests never open a connection on the machine's
// own namespace.
package nfttest

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// NS creates a throwaway network namespace removed when the test ends,
// also on failure; it skips the test without root.
func NS(t testing.TB, prefix string) *netns.Temp {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ns, err := netns.NewTemp(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Remove(); err != nil {
			t.Errorf("remove netns: %v", err)
		}
	})
	return ns
}

// NFT runs the nft tool in the namespace to observe it; it skips the
// test where nft is not installed, so call it after the checks that need
// no nft.
func NFT(t testing.TB, ns *netns.Temp, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed: the rules' text is not checked")
	}
	out, err := sandbox.NFT(ns.NS, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// Ruleset is `nft list ruleset` in the namespace.
func Ruleset(t testing.TB, ns *netns.Temp) string {
	t.Helper()
	return NFT(t, ns, "list", "ruleset")
}

// CIDR parses an address with its prefix length, keeping the address
// (10.1.0.5/24 stays 10.1.0.5, not 10.1.0.0).
func CIDR(t testing.TB, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

// CIDRs parses each of ss with CIDR.
func CIDRs(t testing.TB, ss ...string) []*net.IPNet {
	t.Helper()
	out := make([]*net.IPNet, 0, len(ss))
	for _, s := range ss {
		out = append(out, CIDR(t, s))
	}
	return out
}

// HasTable reports whether the namespace holds the table name of family,
// asking the kernel through netlink.
func HasTable(t testing.TB, ns *netns.Temp, family nftables.TableFamily, name string) bool {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(family)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == name {
			return true
		}
	}
	return false
}

// Contains fails the test for every one of wants that the ruleset text
// out (Ruleset's) lacks, showing out.
func Contains(t testing.TB, out string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
}
