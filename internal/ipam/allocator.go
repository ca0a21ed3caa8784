// Package ipam allocates addresses from range sets the way the reference
// host-local plugin does — round-robin from the last reserved address,
// skipping network, gateway and broadcast — over a crash-safe store that
// does O(1) work per allocation in the common case (see Store).
package ipam

import (
	"errors"
	"fmt"
	"net"
)

// Allocator hands out addresses of one range set (index n of its
// configuration) from a locked store.
type Allocator struct {
	Set   RangeSet
	Index int
	Store *Store
}

// ErrInvalidRequest is wrapped by the error of a requested address that no
// allocation can honour: outside the range set, or the set's gateway.
var ErrInvalidRequest = errors.New("invalid requested IP")

// ErrExhausted is returned when a range set has no free address.
type ErrExhausted struct{ Set RangeSet }

func (e *ErrExhausted) Error() string {
	return "no IP addresses available in range set: " + e.Set.String()
}

// Get allocates an address to the owner: the requested one if given
// (an error if it is taken or is the gateway), else the next free one after
// the last reserved. An owner that already holds an address of this set
// gets it back, so an ADD retried after a crash neither fails nor leaks.
func (a *Allocator) Get(o Owner, requested net.IP, held []net.IP) (*net.IPNet, net.IP, error) {
	for _, ip := range held {
		if r := a.Set.RangeFor(ip); r != nil && (requested == nil || requested.Equal(ip)) {
			if owner, ok := a.Store.OwnerOf(ip); ok && owner == o {
				return &net.IPNet{IP: ip, Mask: r.Subnet.Mask}, r.Gateway, nil
			}
		}
	}
	if requested != nil {
		r := a.Set.RangeFor(requested)
		if r == nil {
			return nil, nil, fmt.Errorf("%w: %s is not in range set %s", ErrInvalidRequest, requested, a.Set.String())
		}
		if requested.Equal(r.Gateway) {
			return nil, nil, fmt.Errorf("%w: %s is the subnet's gateway", ErrInvalidRequest, requested)
		}
		ok, err := a.Store.Reserve(requested, o)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			return nil, nil, fmt.Errorf("requested IP address %s is not available in range set %s", requested, a.Set.String())
		}
		return &net.IPNet{IP: requested, Mask: r.Subnet.Mask}, r.Gateway, nil
	}
	it := a.iter()
	for {
		ip, r := it.next()
		if ip == nil {
			return nil, nil, &ErrExhausted{Set: a.Set}
		}
		ok, err := a.Store.Reserve(ip, o)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			if err := a.Store.SetLastReserved(a.Index, ip); err != nil {
				// The caller never learns of this address: free it here.
				return nil, nil, errors.Join(err, a.Store.Unreserve(ip))
			}
			return &net.IPNet{IP: ip, Mask: r.Subnet.Mask}, r.Gateway, nil
		}
	}
}

// Free tells whether the set has an address left to allocate.
func (a *Allocator) Free() bool {
	it := a.iter()
	for {
		ip, _ := it.next()
		if ip == nil {
			return false
		}
		if !a.Store.Allocated(ip) {
			return true
		}
	}
}

// iter starts after the last reserved address when it is still in the
// set, else at the first range's start.
func (a *Allocator) iter() *rangeIter {
	it := &rangeIter{set: a.Set}
	if last := a.Store.LastReserved(a.Index); last != nil {
		for i := range a.Set {
			if a.Set[i].Contains(last) {
				it.idx, it.cur = i, last
				break
			}
		}
	}
	return it
}

// rangeIter walks a range set once around, from a starting point,
// skipping gateways, as the reference's RangeIter does.
type rangeIter struct {
	set   RangeSet
	idx   int
	cur   net.IP
	start net.IP
}

func (it *rangeIter) next() (net.IP, *Range) {
	for {
		r := &it.set[it.idx]
		if it.cur == nil {
			it.cur = r.RangeStart
			it.start = it.cur
		} else {
			if it.cur.Equal(r.RangeEnd) {
				it.idx = (it.idx + 1) % len(it.set)
				r = &it.set[it.idx]
				it.cur = r.RangeStart
			} else {
				it.cur = NextIP(it.cur)
			}
			if it.start == nil {
				it.start = it.cur
			} else if it.cur.Equal(it.start) {
				return nil, nil
			}
		}
		if !it.cur.Equal(r.Gateway) {
			return it.cur, r
		}
	}
}
