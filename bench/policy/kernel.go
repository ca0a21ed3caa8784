package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/policy/dataplane"
)

// policyTable is the inet table of podnet's policy data plane.
const policyTable = dataplane.TableName

// podCIDRsSet begins the name of the table's sets of the node's own pod
// subnets (internal/policy/dataplane's layout, one set per family): not
// peers. TestInPeerSetDataplane fails should the name change.
const podCIDRsSet = "pod-cidrs"

// inPeerSet reports whether ip is a member of one of the sets (not maps)
// of the policy table in the namespace ns: a plain address set, an
// interval set holding it in one of its ranges, or a concatenation whose
// first field is the address (peer . protocol . port), leaving out the
// sets of the node's own pod subnets. A namespace with no policy table
// holds no peer.
func inPeerSet(ns *netns.NS, ip netip.Addr) (bool, error) {
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	defer c.CloseLasting()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("nftables tables: %w", err)
	}
	i := slices.IndexFunc(tables, func(t *nftables.Table) bool { return t.Name == policyTable })
	if i < 0 {
		return false, nil
	}
	sets, err := c.GetSets(tables[i])
	if err != nil {
		return false, fmt.Errorf("sets of %s: %w", policyTable, err)
	}
	want := ip.AsSlice()
	for _, s := range sets {
		if s.IsMap || strings.HasPrefix(s.Name, podCIDRsSet) || !strings.HasPrefix(s.KeyType.Name, addrType(ip)) {
			continue
		}
		els, err := c.GetSetElements(s)
		if err != nil {
			return false, fmt.Errorf("set %s of %s: %w", s.Name, policyTable, err)
		}
		if holds(s, els, want) {
			return true, nil
		}
	}
	return false, nil
}

// addrType is the nftables type name of ip's family.
func addrType(ip netip.Addr) string {
	if ip.Is4() {
		return nftables.TypeIPAddr.Name
	}
	return nftables.TypeIP6Addr.Name
}

// holds reports whether the elements els of the set s hold the address
// want (the first field of the key, for a concatenation).
func holds(s *nftables.Set, els []nftables.SetElement, want []byte) bool {
	n := len(want)
	if !s.Interval {
		return slices.ContainsFunc(els, func(e nftables.SetElement) bool { return bytes.HasPrefix(e.Key, want) })
	}
	// A concatenation with ranges gives each element its end (KeyEnd,
	// inclusive); a plain interval set gives ranges as a start element and
	// an IntervalEnd element one past the range's end.
	var starts, ends [][]byte
	for _, e := range els {
		switch {
		case len(e.Key) < n:
		case e.KeyEnd != nil:
			if len(e.KeyEnd) >= n && bytes.Compare(e.Key[:n], want) <= 0 && bytes.Compare(want, e.KeyEnd[:n]) <= 0 {
				return true
			}
		case e.IntervalEnd:
			ends = append(ends, e.Key[:n])
		default:
			starts = append(starts, e.Key[:n])
		}
	}
	for _, start := range starts {
		if bytes.Compare(start, want) > 0 {
			continue
		}
		// The range starting at start ends at the first end after it
		// (none: it runs to the family's last address).
		var end []byte
		for _, e := range ends {
			if bytes.Compare(e, start) > 0 && (end == nil || bytes.Compare(e, end) < 0) {
				end = e
			}
		}
		if end == nil || bytes.Compare(want, end) < 0 {
			return true
		}
	}
	return false
}
