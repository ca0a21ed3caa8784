package ipam

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
)

// Range is a contiguous span of allocatable addresses inside a subnet, as
// host-local's configuration describes it.
type Range struct {
	RangeStart net.IP    `json:"rangeStart,omitempty"`
	RangeEnd   net.IP    `json:"rangeEnd,omitempty"`
	Subnet     net.IPNet `json:"-"`
	Gateway    net.IP    `json:"gateway,omitempty"`

	// badSubnet keeps a subnet that did not parse, for Canonicalize to
	// report as a configuration error rather than a decoding one.
	badSubnet string
}

// rangeJSON is Range on the wire: the subnet as a CIDR string.
type rangeJSON struct {
	RangeStart net.IP `json:"rangeStart,omitempty"`
	RangeEnd   net.IP `json:"rangeEnd,omitempty"`
	Subnet     string `json:"subnet"`
	Gateway    net.IP `json:"gateway,omitempty"`
}

// UnmarshalJSON reads a range; the subnet must be a CIDR.
func (r *Range) UnmarshalJSON(b []byte) error {
	var j rangeJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Range{RangeStart: j.RangeStart, RangeEnd: j.RangeEnd, Gateway: j.Gateway}
	if j.Subnet == "" {
		return nil
	}
	ip, n, err := net.ParseCIDR(j.Subnet)
	if err != nil {
		r.badSubnet = j.Subnet
		return nil
	}
	r.Subnet = net.IPNet{IP: ip, Mask: n.Mask}
	return nil
}

// MarshalJSON writes a range with its subnet as a CIDR.
func (r Range) MarshalJSON() ([]byte, error) {
	return json.Marshal(rangeJSON{RangeStart: r.RangeStart, RangeEnd: r.RangeEnd, Subnet: r.Subnet.String(), Gateway: r.Gateway})
}

// Canonicalize validates the range and fills in the reference's defaults:
// gateway = network+1, rangeStart = network+1, rangeEnd = the last address
// (the broadcast excluded for IPv4).
func (r *Range) Canonicalize() error {
	if r.badSubnet != "" {
		return fmt.Errorf("invalid subnet %q", r.badSubnet)
	}
	if r.Subnet.IP == nil {
		return fmt.Errorf("range has no subnet")
	}
	ip, err := Canonical(r.Subnet.IP)
	if err != nil {
		return err
	}
	r.Subnet.IP = ip
	if len(r.Subnet.IP) != len(r.Subnet.Mask) {
		return fmt.Errorf("subnet %s: address and mask families differ", r.Subnet.String())
	}
	ones, bits := r.Subnet.Mask.Size()
	if ones > bits-2 {
		return fmt.Errorf("network %s too small to allocate from", r.Subnet.String())
	}
	if network := r.Subnet.IP.Mask(r.Subnet.Mask); !network.Equal(r.Subnet.IP) {
		return fmt.Errorf("network has host bits set: for a subnet mask of length %d the network address is %s", ones, network)
	}
	fix := func(what string, p *net.IP, def net.IP) error {
		if *p == nil {
			*p = def
			return nil
		}
		c, err := Canonical(*p)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if len(c) != len(r.Subnet.IP) || !r.Subnet.Contains(c) {
			return fmt.Errorf("%s %s not in network %s", what, c, r.Subnet.String())
		}
		*p = c
		return nil
	}
	if err := fix("gateway", &r.Gateway, NextIP(r.Subnet.IP)); err != nil {
		return err
	}
	if err := fix("rangeStart", &r.RangeStart, NextIP(r.Subnet.IP)); err != nil {
		return err
	}
	if err := fix("rangeEnd", &r.RangeEnd, lastIP(r.Subnet)); err != nil {
		return err
	}
	if Cmp(r.RangeStart, r.RangeEnd) > 0 {
		return fmt.Errorf("rangeStart %s is after rangeEnd %s", r.RangeStart, r.RangeEnd)
	}
	return nil
}

// Contains tells whether addr is an allocatable address of the range.
func (r *Range) Contains(addr net.IP) bool {
	a, err := Canonical(addr)
	if err != nil || len(a) != len(r.Subnet.IP) || !r.Subnet.Contains(a) {
		return false
	}
	if r.RangeStart != nil && Cmp(a, r.RangeStart) < 0 {
		return false
	}
	if r.RangeEnd != nil && Cmp(a, r.RangeEnd) > 0 {
		return false
	}
	return true
}

// Overlaps tells whether two canonical ranges share an address.
func (r *Range) Overlaps(o *Range) bool {
	if len(r.Subnet.IP) != len(o.Subnet.IP) {
		return false
	}
	return r.Contains(o.RangeStart) || r.Contains(o.RangeEnd) || o.Contains(r.RangeStart) || o.Contains(r.RangeEnd)
}

// String renders the range as start-end.
func (r *Range) String() string { return r.RangeStart.String() + "-" + r.RangeEnd.String() }

// RangeSet is a list of ranges of one family, allocated from as one pool.
type RangeSet []Range

// Canonicalize validates every range and checks the set is non-empty, of
// one family and free of overlaps.
func (s RangeSet) Canonicalize() error {
	if len(s) == 0 {
		return fmt.Errorf("empty range set")
	}
	for i := range s {
		if err := s[i].Canonicalize(); err != nil {
			return err
		}
		if len(s[i].Subnet.IP) != len(s[0].Subnet.IP) {
			return fmt.Errorf("mixed address families")
		}
	}
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[i].Overlaps(&s[j]) {
				return fmt.Errorf("subnets %s and %s overlap", s[i].String(), s[j].String())
			}
		}
	}
	return nil
}

// Contains tells whether addr is allocatable in one of the ranges.
func (s RangeSet) Contains(addr net.IP) bool { return s.RangeFor(addr) != nil }

// RangeFor returns the range holding addr, or nil.
func (s RangeSet) RangeFor(addr net.IP) *Range {
	for i := range s {
		if s[i].Contains(addr) {
			return &s[i]
		}
	}
	return nil
}

// Overlaps tells whether two sets share an address.
func (s RangeSet) Overlaps(o RangeSet) bool {
	for i := range s {
		for j := range o {
			if s[i].Overlaps(&o[j]) {
				return true
			}
		}
	}
	return false
}

// IsV4 tells whether the set is of IPv4 ranges.
func (s RangeSet) IsV4() bool { return len(s) > 0 && len(s[0].Subnet.IP) == net.IPv4len }

// String renders the set as its ranges separated by commas.
func (s RangeSet) String() string {
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i].String()
	}
	return strings.Join(out, ",")
}
