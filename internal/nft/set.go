package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"sort"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Set describes a named set or map of a table: what its keys are, whether
// they are ranges, and what a map maps them to. Its elements are
// nftables.SetElement values in the form the kernel stores and dumps
// them: Key (the concatenated fields, each padded to 4 bytes, for a
// concatenation), for an interval set a start element and an end element
// flagged IntervalEnd holding the first key past the range (see
// PrefixElements), or KeyEnd for a concatenation of ranges; Val for a
// data map, VerdictData for a verdict map; Comment for an owner.
type Set struct {
	Table *nftables.Table
	Name  string
	// Key is the type of the keys: one type, or the fields of a
	// concatenation (ipv4_addr . inet_proto . inet_service).
	Key []nftables.SetDatatype
	// Interval makes the keys ranges (prefixes).
	Interval bool
	// Data is a map's value type (nftables.TypeVerdict for a verdict
	// map, a concatenation from nftables.ConcatSetType for a map to
	// address . port); the zero value makes a set.
	Data nftables.SetDatatype
	// Dynamic lets rules add and update elements from the packet path
	// (flags dynamic); Timeout lets elements expire (flags timeout), after
	// the timeout the rule that adds them gives.
	Dynamic, Timeout bool
	// Size is the most elements the set holds (0: the kernel's default,
	// 65535 for a dynamic set); it matters for the sets the packet path
	// fills.
	Size uint32
}

// IsMap tells whether s is a map.
func (s Set) IsMap() bool { return s.Data.Name != "" }

// String is "family table name", for errors.
func (s Set) String() string {
	return fmt.Sprintf("%s %s set %s", FamilyName(s.Table.Family), s.Table.Name, s.Name)
}

// setIDs numbers the sets of batches. nftables.Conn.AddSet numbers a set
// without ID from a global counter it does not synchronize, a data race
// between connections; sets are referred to by name, so any ID does.
var setIDs atomic.Uint32

// nftSet returns a fresh nftables.Set for s, with an ID of its own.
func (s Set) nftSet() (*nftables.Set, error) {
	if len(s.Key) == 0 {
		return nil, fmt.Errorf("%s: no key type", s)
	}
	ns := &nftables.Set{Table: s.Table, Name: s.Name, Interval: s.Interval, KeyType: s.Key[0], ID: setIDs.Add(1)}
	if len(s.Key) > 1 {
		t, err := nftables.ConcatSetType(s.Key...)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s, err)
		}
		ns.KeyType, ns.Concatenation = t, true
	}
	if s.IsMap() {
		ns.IsMap, ns.DataType = true, s.Data
	}
	ns.Dynamic, ns.HasTimeout, ns.Size = s.Dynamic, s.Timeout, s.Size
	if len(s.Key) == 1 && s.Key[0].Name == nftables.TypeIFName.Name {
		ns.KeyByteOrder = binaryutil.NativeEndian // as nft reads strings
	}
	return ns, nil
}

// AddSet queues the creation of s, with its table, unless they exist.
func (tx *Tx) AddSet(s Set) error {
	ns, err := s.nftSet()
	if err != nil {
		return err
	}
	tx.AddTable(s.Table)
	if err := tx.c.nft.AddSet(ns, nil); err != nil {
		return fmt.Errorf("add %s: %w", s, err)
	}
	tx.c.queued++
	return nil
}

// AddElements queues the addition of elems to s, which must exist or be
// added earlier in the batch; an element already there is no error
// unless a map holds its key with another value.
func (tx *Tx) AddElements(s Set, elems []nftables.SetElement) error {
	if len(elems) == 0 {
		return nil
	}
	ns, err := s.nftSet()
	if err != nil {
		return err
	}
	for _, chunk := range chunks(elems) {
		if err := tx.c.nft.SetAddElements(ns, chunk); err != nil {
			return fmt.Errorf("add elements to %s: %w", s, err)
		}
		tx.c.queued++
	}
	return nil
}

// chunks splits elems into runs that each fit one netlink message of at
// most msgBytes: the element list is one netlink attribute, whose 16-bit
// length cannot describe more than 64 KiB, and the socket buffers are
// sized by message count (sizeBuffers).
func chunks(elems []nftables.SetElement) [][]nftables.SetElement {
	const (
		budget  = msgBytes - 256 // the message's headers and attributes
		perElem = 48             // an element's attribute headers and flags
	)
	var out [][]nftables.SetElement
	start, size := 0, 0
	for i, e := range elems {
		n := perElem + len(e.Key) + len(e.KeyEnd) + len(e.Val) + len(e.Comment)
		if e.VerdictData != nil {
			n += 32 + len(e.VerdictData.Chain)
		}
		if i > start && size+n > budget {
			out = append(out, elems[start:i])
			start, size = i, 0
		}
		size += n
	}
	return append(out, elems[start:])
}

// DelElements queues the removal of elems from s; the batch fails with
// ENOENT when one is not there. The elements of an interval set are
// deleted in ascending order, as nft does: the kernel's interval tree
// fails to find some elements when others of the batch were deleted out
// of order before them.
func (tx *Tx) DelElements(s Set, elems []nftables.SetElement) error {
	if len(elems) == 0 {
		return nil
	}
	ns, err := s.nftSet()
	if err != nil {
		return err
	}
	if s.Interval {
		elems = ascending(elems)
	}
	for _, chunk := range chunks(elems) {
		if err := tx.c.nft.SetDeleteElements(ns, chunk); err != nil {
			return fmt.Errorf("delete elements of %s: %w", s, err)
		}
		tx.c.queued++
	}
	return nil
}

// Elements dumps the elements of s; exists is false when s (or its
// table) does not exist.
func (tx *Tx) Elements(s Set) (elems []nftables.SetElement, exists bool, err error) {
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: cstring(s.Table.Name)},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstring(s.Name)},
	}
	err = tx.c.dumpRetried(s.Table.Family, unix.NFT_MSG_GETSETELEM, attrs, func() { elems = elems[:0] }, func(typ uint16, data []byte) error {
		if typ == unix.NFT_MSG_NEWSETELEM {
			elems = append(elems, elementsOf(data)...)
		}
		return nil
	})
	if errors.Is(err, errMissing) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("list elements of %s: %w", s, err)
	}
	return elems, true, nil
}

// GetElements looks the keys up in s, one targeted request each (no
// dump of the set), and returns the elements found, with their values.
func (tx *Tx) GetElements(s Set, keys ...[]byte) ([]nftables.SetElement, error) {
	var found []nftables.SetElement
	for _, k := range keys {
		key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: k}})
		if err != nil {
			return nil, err
		}
		elem, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: key}})
		if err != nil {
			return nil, err
		}
		list, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: elem}})
		if err != nil {
			return nil, err
		}
		attrs := []netlink.Attribute{
			{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: cstring(s.Table.Name)},
			{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstring(s.Name)},
			{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: list},
		}
		data, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			return nil, err
		}
		req := netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
				Flags: netlink.Request | netlink.Acknowledge,
			},
			Data: append(nfgenmsg(s.Table.Family), data...),
		}
		err = tx.c.dump(req, func(typ uint16, data []byte) error {
			if typ == unix.NFT_MSG_NEWSETELEM {
				found = append(found, elementsOf(data)...)
			}
			return nil
		})
		if errors.Is(err, errMissing) {
			continue
		}
		if err != nil {
			tx.c.dropNL()
			return nil, fmt.Errorf("look up element of %s: %w", s, err)
		}
	}
	return found, nil
}

// elementsOf decodes the elements of a set element message.
func elementsOf(data []byte) []nftables.SetElement {
	var elems []nftables.SetElement
	_ = walkAttrs(data[4:], func(t uint16, v []byte) {
		if t != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			return
		}
		_ = walkAttrs(v, func(t uint16, v []byte) {
			if t == unix.NFTA_LIST_ELEM {
				elems = append(elems, decodeElement(v))
			}
		})
	})
	return elems
}

// decodeElement decodes one NFTA_LIST_ELEM of a set element dump.
func decodeElement(b []byte) nftables.SetElement {
	var e nftables.SetElement
	value := func(v []byte) (out []byte) {
		_ = walkAttrs(v, func(t uint16, v []byte) {
			if t == unix.NFTA_DATA_VALUE {
				out = bytes.Clone(v)
			}
		})
		return out
	}
	_ = walkAttrs(b, func(t uint16, v []byte) {
		switch t {
		case unix.NFTA_SET_ELEM_KEY:
			e.Key = value(v)
		case nftables.NFTA_SET_ELEM_KEY_END:
			e.KeyEnd = value(v)
		case unix.NFTA_SET_ELEM_FLAGS:
			if len(v) == 4 {
				e.IntervalEnd = binary.BigEndian.Uint32(v)&unix.NFT_SET_ELEM_INTERVAL_END != 0
			}
		case unix.NFTA_SET_ELEM_USERDATA:
			if s, ok := userdata.GetString(v, userdata.NFTNL_UDATA_SET_ELEM_COMMENT); ok {
				e.Comment = s
			}
		case unix.NFTA_SET_ELEM_DATA:
			_ = walkAttrs(v, func(t uint16, v []byte) {
				switch t {
				case unix.NFTA_DATA_VALUE:
					e.Val = bytes.Clone(v)
				case unix.NFTA_DATA_VERDICT:
					vd := &expr.Verdict{}
					_ = walkAttrs(v, func(t uint16, v []byte) {
						switch {
						case t == unix.NFTA_VERDICT_CODE && len(v) == 4:
							vd.Kind = expr.VerdictKind(int32(binary.BigEndian.Uint32(v)))
						case t == unix.NFTA_VERDICT_CHAIN:
							vd.Chain = cstringOf(v)
						}
					})
					e.VerdictData = vd
				}
			})
		}
	})
	return e
}

// ascending returns the elements ordered by key, a range's start before
// the end of the range before it that has the same key.
func ascending(elems []nftables.SetElement) []nftables.SetElement {
	out := append([]nftables.SetElement(nil), elems...)
	sort.SliceStable(out, func(i, j int) bool {
		if c := bytes.Compare(out[i].Key, out[j].Key); c != 0 {
			return c < 0
		}
		return !out[i].IntervalEnd && out[j].IntervalEnd
	})
	return out
}

// elementKey identifies an element within its set: its key, range end
// and interval flag.
func elementKey(e nftables.SetElement) string {
	flag := "s"
	if e.IntervalEnd {
		flag = "e"
	}
	return flag + string(e.Key) + "\x00" + string(e.KeyEnd)
}

// sameValue tells whether two elements of one key carry the same value
// and comment.
func sameValue(a, b nftables.SetElement) bool {
	if !bytes.Equal(a.Val, b.Val) || a.Comment != b.Comment {
		return false
	}
	if a.VerdictData == nil || b.VerdictData == nil {
		return a.VerdictData == nil && b.VerdictData == nil
	}
	return a.VerdictData.Kind == b.VerdictData.Kind && a.VerdictData.Chain == b.VerdictData.Chain
}

// units groups elements into what is added and deleted as a whole: a
// range of an interval set (its start and the end element after it), or
// a single element. An end element never outlives its start: the kernel
// would read a lone end as the end of whatever start precedes it.
func units(elems []nftables.SetElement) [][]nftables.SetElement {
	interval := false
	for _, e := range elems {
		interval = interval || e.IntervalEnd
	}
	if interval {
		elems = ascending(elems)
	}
	var out [][]nftables.SetElement
	for i := 0; i < len(elems); i++ {
		if interval && !elems[i].IntervalEnd && i+1 < len(elems) && elems[i+1].IntervalEnd {
			out = append(out, elems[i:i+2])
			i++
			continue
		}
		out = append(out, elems[i:i+1])
	}
	return out
}

// unitKey identifies a unit within its set by its elements' keys.
func unitKey(u []nftables.SetElement) string {
	k := ""
	for _, e := range u {
		k += elementKey(e) + "\x01"
	}
	return k
}

// sameValues tells whether two units of one key carry the same values.
func sameValues(a, b []nftables.SetElement) bool {
	for i := range a {
		if !sameValue(a[i], b[i]) {
			return false
		}
	}
	return true
}

// Diff returns what turns the elements have into want: the elements to
// add and those to delete. A range of an interval set (a start and its
// end element) is added or deleted whole: one whose start or end changed
// is deleted and the new one added. An element of want whose key have
// holds with another value (or comment) is deleted and added again.
// Duplicates in want count once.
func Diff(have, want []nftables.SetElement) (add, del []nftables.SetElement) {
	wantUnits := units(want)
	wanted := make(map[string][]nftables.SetElement, len(wantUnits))
	for _, u := range wantUnits {
		wanted[unitKey(u)] = u
	}
	present := make(map[string]bool, len(have))
	for _, u := range units(have) {
		k := unitKey(u)
		if w, ok := wanted[k]; ok && sameValues(u, w) {
			present[k] = true
			continue
		}
		del = append(del, u...)
	}
	for _, u := range wantUnits {
		if k := unitKey(u); !present[k] {
			present[k] = true
			add = append(add, u...)
		}
	}
	return add, del
}

// SyncSet makes the elements of s exactly want in one transaction,
// creating s and its table when missing: it reads the kernel's elements
// and adds only the missing, deletes only the stale ones. It reports
// whether it changed anything.
func (c *Conn) SyncSet(s Set, want []nftables.SetElement) (changed bool, err error) {
	err = c.Transact(func(tx *Tx) (bool, error) {
		changed = false
		have, exists, err := tx.Elements(s)
		if err != nil {
			return false, err
		}
		add, del := Diff(have, want)
		if exists && len(add) == 0 && len(del) == 0 {
			return false, nil
		}
		changed = true
		if !exists {
			if err := tx.AddSet(s); err != nil {
				return false, err
			}
		}
		if err := tx.DelElements(s, del); err != nil {
			return false, err
		}
		return len(del) > 0, tx.AddElements(s, add)
	})
	if err != nil {
		return false, fmt.Errorf("sync %s: %w", s, err)
	}
	return changed, nil
}

// AddElements adds elems to s in one transaction, creating s and its
// table when missing; elements already there are no error.
func (c *Conn) AddElements(s Set, elems ...nftables.SetElement) error {
	err := c.Transact(func(tx *Tx) (bool, error) {
		if err := tx.AddSet(s); err != nil {
			return false, err
		}
		return false, tx.AddElements(s, elems)
	})
	if err != nil {
		return fmt.Errorf("add elements to %s: %w", s, err)
	}
	return nil
}

// DeleteElements removes elems from s in one transaction; elements (or a
// set) not there are no error. The first batch deletes blindly; only when
// it fails because an element is missing are the elements read, and the
// present ones deleted.
func (c *Conn) DeleteElements(s Set, elems ...nftables.SetElement) error {
	err := c.Transact(func(tx *Tx) (bool, error) {
		del := elems
		if tx.Retry() {
			have, _, err := tx.Elements(s)
			if err != nil {
				return false, err
			}
			del = intersect(have, elems)
		}
		return true, tx.DelElements(s, del)
	})
	if err != nil {
		return fmt.Errorf("delete elements of %s: %w", s, err)
	}
	return nil
}

// intersect returns the elements of have whose key is one of elems'.
func intersect(have, elems []nftables.SetElement) []nftables.SetElement {
	keys := make(map[string]bool, len(elems))
	for _, e := range elems {
		keys[elementKey(e)] = true
	}
	var out []nftables.SetElement
	for _, h := range have {
		if keys[elementKey(h)] {
			out = append(out, h)
		}
	}
	return out
}

// Elements returns the elements of s; none when s does not exist.
func (c *Conn) Elements(s Set) ([]nftables.SetElement, error) {
	var elems []nftables.SetElement
	err := c.read(func(tx *Tx) (err error) {
		elems, _, err = tx.Elements(s)
		return err
	})
	return elems, err
}

// FamilyPrefixElements returns PrefixElements of the prefixes of one
// family (IPv4 when v4; IPv4-mapped IPv6 prefixes count as neither), none
// when there are none; an invalid prefix is an error.
func FamilyPrefixElements(prefixes []netip.Prefix, v4 bool) ([]nftables.SetElement, error) {
	var nets []*net.IPNet
	for _, p := range prefixes {
		if !p.IsValid() {
			return nil, fmt.Errorf("invalid prefix %v", p)
		}
		if p.Addr().Is4() != v4 || p.Addr().Is4In6() {
			continue
		}
		p = p.Masked()
		nets = append(nets, &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
	}
	if len(nets) == 0 {
		return nil, nil
	}
	return PrefixElements(nets)
}

// PrefixElements returns the elements of an interval set of addresses
// (ipv4_addr or ipv6_addr) that hold the prefixes: each range's first
// address, and the first address past it flagged IntervalEnd (none past
// the end of the address space). Prefixes that overlap or touch are
// merged into one range, as nft's auto-merge does: an interval set holds
// no overlapping ranges, and the kernel cannot delete one of two ranges
// that share a boundary. IPv4 prefixes (and IPv4-mapped ones) give 4-byte
// keys, the others 16-byte keys; elements come in address order.
func PrefixElements(prefixes []*net.IPNet) ([]nftables.SetElement, error) {
	type rng struct {
		size        int // address length
		first, next *big.Int
	}
	var rs []rng
	for _, p := range prefixes {
		if p == nil {
			return nil, errors.New("nil prefix")
		}
		ones, bits := p.Mask.Size()
		ip := p.IP.To4()
		switch {
		case ip != nil && bits == 128 && ones >= 96:
			ones, bits = ones-96, 32
		case ip != nil && bits == 32:
		case ip == nil && bits == 128 && len(p.IP) == net.IPv6len:
			ip = p.IP
		default:
			return nil, fmt.Errorf("invalid prefix %s (mask %s)", p.IP, p.Mask)
		}
		first := new(big.Int).SetBytes(ip.Mask(net.CIDRMask(ones, bits)))
		next := new(big.Int).Add(first, new(big.Int).Lsh(big.NewInt(1), uint(bits-ones)))
		rs = append(rs, rng{len(ip), first, next})
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].size != rs[j].size {
			return rs[i].size < rs[j].size
		}
		return rs[i].first.Cmp(rs[j].first) < 0
	})
	var merged []rng
	for _, r := range rs {
		if n := len(merged); n > 0 && merged[n-1].size == r.size && r.first.Cmp(merged[n-1].next) <= 0 {
			if r.next.Cmp(merged[n-1].next) > 0 {
				merged[n-1].next = r.next
			}
			continue
		}
		merged = append(merged, r)
	}
	var out []nftables.SetElement
	for _, r := range merged {
		out = append(out, nftables.SetElement{Key: r.first.FillBytes(make([]byte, r.size))})
		if r.next.BitLen() <= 8*r.size {
			out = append(out, nftables.SetElement{Key: r.next.FillBytes(make([]byte, r.size)), IntervalEnd: true})
		}
	}
	return out, nil
}

// DelSet queues the removal of s with its elements, whether or not it
// exists (it is added first); no rule may refer to it.
func (tx *Tx) DelSet(s Set) error {
	if err := tx.AddSet(s); err != nil {
		return err
	}
	ns, err := s.nftSet()
	if err != nil {
		return err
	}
	tx.c.nft.DelSet(ns)
	tx.c.queued++
	return nil
}
