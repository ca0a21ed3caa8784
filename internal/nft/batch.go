package nft

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Batch is one nftables transaction of any size, encoded here rather
// than by the nftables package, for the features that write tens of
// thousands of objects at once (the service proxy). Conn.Transact's
// batches ask the kernel for an acknowledgement of every message and an
// echo of every rule, two or three socket reads per object; a Batch asks
// for one acknowledgement, of its last message: the kernel answers the
// others only when they fail. The kernel processes a batch within the
// send, so every answer is queued when Conn.Send reads them.
//
// Objects are created with "add" semantics, as with Transact.
//
// The messages are encoded into one buffer as they are queued, the batch
// delimiters around them: a Batch is sent once.
type Batch struct {
	// bufs hold the messages, after the batch-begin message, in chunks
	// sent as one datagram: a batch of many megabytes never grows (and
	// copies) one buffer.
	bufs  [][]byte
	n     int   // messages queued
	last  int   // offset of the last message queued in the last chunk
	err   error // the first encoding error
	bytes int
}

// chunkBytes is the size of a Batch's buffers.
const chunkBytes = 1 << 20

// nlmsgHdrLen is the size of a netlink message header.
const nlmsgHdrLen = 16

// batchHeader is the nfgenmsg of the batch delimiters: the subsystem as
// res_id, big endian.
var batchHeader = []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}

// appendMsg appends a netlink message of type typ, numbered seq, to b.
func appendMsg(b []byte, typ, flags uint16, seq uint32, data ...[]byte) []byte {
	n := nlmsgHdrLen
	for _, d := range data {
		n += len(d)
	}
	b = binary.NativeEndian.AppendUint32(b, uint32(n))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port ID: the kernel
	for _, d := range data {
		b = append(b, d...)
	}
	return b
}

func (b *Batch) add(msg uint16, flags netlink.HeaderFlags, family nftables.TableFamily, attrs []netlink.Attribute) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		if b.err == nil {
			b.err = err
		}
		return
	}
	if b.bufs == nil {
		b.bufs = [][]byte{appendMsg(make([]byte, 0, 64<<10), unix.NFNL_MSG_BATCH_BEGIN, uint16(netlink.Request), 0, batchHeader)}
	}
	size := nlmsgHdrLen + 4 + len(data)
	buf := &b.bufs[len(b.bufs)-1]
	if len(*buf)+size > cap(*buf) {
		b.bufs = append(b.bufs, make([]byte, 0, max(chunkBytes, size)))
		buf = &b.bufs[len(b.bufs)-1]
	}
	b.n++
	b.last = len(*buf)
	b.bytes += size
	*buf = appendMsg(*buf, unix.NFNL_SUBSYS_NFTABLES<<8|msg, uint16(netlink.Request|flags), uint32(b.n), nfgenmsg(family), data)
}

// nested is an attribute holding attrs; an encoding error (an attribute
// over 64 KiB) fails the batch.
func (b *Batch) nested(typ uint16, attrs ...netlink.Attribute) netlink.Attribute {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil && b.err == nil {
		b.err = err
	}
	return netlink.Attribute{Type: unix.NLA_F_NESTED | typ, Data: data}
}

// nftaSetFieldLen is NFTA_SET_FIELD_LEN, a concatenated key field's
// length in the set description, which x/sys lacks.
const nftaSetFieldLen = 1

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// AddTable queues the creation of t unless it exists.
func (b *Batch) AddTable(t *nftables.Table) {
	b.add(unix.NFT_MSG_NEWTABLE, netlink.Create, t.Family, []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: cstring(t.Name)}})
}

// DelTable queues the removal of t with everything in it, whether or not
// it exists.
func (b *Batch) DelTable(t *nftables.Table) {
	b.AddTable(t)
	b.add(unix.NFT_MSG_DELTABLE, 0, t.Family, []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: cstring(t.Name)}})
}

// ruleAttrs names the chain of a rule message.
func ruleAttrs(ch *nftables.Chain) []netlink.Attribute {
	return []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: cstring(ch.Table.Name)},
		{Type: unix.NFTA_RULE_CHAIN, Data: cstring(ch.Name)},
	}
}

func chainAttrs(ch *nftables.Chain) []netlink.Attribute {
	return []netlink.Attribute{
		{Type: unix.NFTA_CHAIN_TABLE, Data: cstring(ch.Table.Name)},
		{Type: unix.NFTA_CHAIN_NAME, Data: cstring(ch.Name)},
	}
}

// AddChain queues the creation of ch, a base chain when it has a hook,
// unless it exists.
func (b *Batch) AddChain(ch *nftables.Chain) {
	attrs := chainAttrs(ch)
	if ch.Hooknum != nil && ch.Priority != nil {
		attrs = append(attrs, b.nested(unix.NFTA_CHAIN_HOOK,
			netlink.Attribute{Type: unix.NFTA_HOOK_HOOKNUM, Data: be32(uint32(*ch.Hooknum))},
			netlink.Attribute{Type: unix.NFTA_HOOK_PRIORITY, Data: be32(uint32(*ch.Priority))},
		))
	}
	if ch.Policy != nil {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_CHAIN_POLICY, Data: be32(uint32(*ch.Policy))})
	}
	if ch.Type != "" {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_CHAIN_TYPE, Data: cstring(string(ch.Type))})
	}
	b.add(unix.NFT_MSG_NEWCHAIN, netlink.Create, ch.Table.Family, attrs)
}

// FlushChain queues the removal of every rule of ch, which must exist.
func (b *Batch) FlushChain(ch *nftables.Chain) {
	b.add(unix.NFT_MSG_DELRULE, 0, ch.Table.Family, ruleAttrs(ch))
}

// DelChain queues the removal of ch with its rules; nothing may refer
// to it.
func (b *Batch) DelChain(ch *nftables.Chain) {
	b.add(unix.NFT_MSG_DELCHAIN, 0, ch.Table.Family, chainAttrs(ch))
}

// AddRule queues a rule of exprs appended to ch.
func (b *Batch) AddRule(ch *nftables.Chain, exprs []expr.Any) {
	list := make([]netlink.Attribute, len(exprs))
	for i, e := range exprs {
		data, err := expr.Marshal(byte(ch.Table.Family), e)
		if err != nil {
			if b.err == nil {
				b.err = fmt.Errorf("rule of %s: %w", ch.Name, err)
			}
			return
		}
		list[i] = netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: data}
	}
	b.add(unix.NFT_MSG_NEWRULE, netlink.Create|unix.NLM_F_APPEND, ch.Table.Family,
		append(ruleAttrs(ch), b.nested(unix.NFTA_RULE_EXPRESSIONS, list...)))
}

// AddSet queues the creation of s unless it exists.
func (b *Batch) AddSet(s Set) {
	ns, err := s.nftSet()
	if err != nil {
		if b.err == nil {
			b.err = err
		}
		return
	}
	flags := uint32(0)
	for _, f := range []struct {
		on  bool
		bit uint32
	}{
		{ns.Interval, unix.NFT_SET_INTERVAL}, {ns.IsMap, unix.NFT_SET_MAP}, {ns.HasTimeout, unix.NFT_SET_TIMEOUT},
		{ns.Dynamic, unix.NFT_SET_EVAL}, {ns.Concatenation, nftables.NFT_SET_CONCAT},
	} {
		if f.on {
			flags |= f.bit
		}
	}
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_SET_TABLE, Data: cstring(s.Table.Name)},
		{Type: unix.NFTA_SET_NAME, Data: cstring(s.Name)},
		{Type: unix.NFTA_SET_FLAGS, Data: be32(flags)},
		{Type: unix.NFTA_SET_KEY_TYPE, Data: be32(ns.KeyType.GetNFTMagic())},
		{Type: unix.NFTA_SET_KEY_LEN, Data: be32(ns.KeyType.Bytes)},
		{Type: unix.NFTA_SET_ID, Data: be32(ns.ID)},
	}
	if ns.IsMap {
		typ := ns.DataType.GetNFTMagic()
		if ns.DataType.Name == nftables.TypeVerdict.Name {
			typ = unix.NFT_DATA_VERDICT
		}
		attrs = append(attrs,
			netlink.Attribute{Type: unix.NFTA_SET_DATA_TYPE, Data: be32(typ)},
			netlink.Attribute{Type: unix.NFTA_SET_DATA_LEN, Data: be32(ns.DataType.Bytes)})
	}
	var desc []netlink.Attribute
	if s.Size > 0 {
		desc = append(desc, netlink.Attribute{Type: unix.NFTA_SET_DESC_SIZE, Data: be32(s.Size)})
	}
	if ns.Concatenation {
		var fields []netlink.Attribute
		for _, t := range s.Key {
			fields = append(fields, b.nested(unix.NFTA_LIST_ELEM, netlink.Attribute{Type: nftaSetFieldLen, Data: be32(t.Bytes)}))
		}
		desc = append(desc, b.nested(nftables.NFTA_SET_DESC_CONCAT, fields...))
	}
	if len(desc) > 0 {
		attrs = append(attrs, b.nested(unix.NFTA_SET_DESC, desc...))
	}
	b.AddTable(s.Table)
	b.add(unix.NFT_MSG_NEWSET, netlink.Create, s.Table.Family, attrs)
}

// AddElements queues the addition of elems to s, which must exist or be
// added earlier in the batch.
func (b *Batch) AddElements(s Set, elems []nftables.SetElement) {
	b.elements(unix.NFT_MSG_NEWSETELEM, netlink.Create, s, elems)
}

// DelElements queues the removal of elems from s; the batch fails when
// one is not there.
func (b *Batch) DelElements(s Set, elems []nftables.SetElement) {
	if s.Interval {
		elems = ascending(elems)
	}
	b.elements(unix.NFT_MSG_DELSETELEM, 0, s, elems)
}

func (b *Batch) elements(msg uint16, flags netlink.HeaderFlags, s Set, elems []nftables.SetElement) {
	var list attrs
	for _, chunk := range chunks(elems) {
		list = list[:0]
		for _, e := range chunk {
			list.element(e)
		}
		b.add(msg, flags, s.Table.Family, []netlink.Attribute{
			{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: cstring(s.Table.Name)},
			{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstring(s.Name)},
			{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: list},
		})
	}
}

// attrs is netlink attributes encoded as they are appended, a nested
// one opened and closed around its contents: a list of a hundred
// elements is one buffer, not an allocation per attribute. A chunk's
// message stays far below an attribute's 64 KiB.
type attrs []byte

// put appends the attribute typ holding data.
func (a *attrs) put(typ uint16, data []byte) {
	n := 4 + len(data)
	*a = binary.NativeEndian.AppendUint16(*a, uint16(n))
	*a = binary.NativeEndian.AppendUint16(*a, typ)
	*a = append(*a, data...)
	for ; n%4 != 0; n++ {
		*a = append(*a, 0)
	}
}

// open starts the nested attribute typ; close(the offset it returns)
// ends it.
func (a *attrs) open(typ uint16) int {
	off := len(*a)
	*a = binary.NativeEndian.AppendUint16(*a, 0)
	*a = binary.NativeEndian.AppendUint16(*a, unix.NLA_F_NESTED|typ)
	return off
}

func (a *attrs) close(off int) {
	binary.NativeEndian.PutUint16((*a)[off:], uint16(len(*a)-off))
}

// element appends one set element, an NFTA_LIST_ELEM.
func (a *attrs) element(e nftables.SetElement) {
	el := a.open(unix.NFTA_LIST_ELEM)
	a.value(unix.NFTA_SET_ELEM_KEY, e.Key)
	if len(e.KeyEnd) > 0 {
		a.value(nftables.NFTA_SET_ELEM_KEY_END, e.KeyEnd)
	}
	if e.IntervalEnd {
		a.put(unix.NFTA_SET_ELEM_FLAGS, be32(unix.NFT_SET_ELEM_INTERVAL_END))
	}
	switch {
	case e.VerdictData != nil:
		data := a.open(unix.NFTA_SET_ELEM_DATA)
		v := a.open(unix.NFTA_DATA_VERDICT)
		a.put(unix.NFTA_VERDICT_CODE, be32(uint32(e.VerdictData.Kind)))
		if e.VerdictData.Chain != "" {
			a.put(unix.NFTA_VERDICT_CHAIN, cstring(e.VerdictData.Chain))
		}
		a.close(v)
		a.close(data)
	case len(e.Val) > 0:
		a.value(unix.NFTA_SET_ELEM_DATA, e.Val)
	}
	a.close(el)
}

// value appends the nested attribute typ holding an NFTA_DATA_VALUE.
func (a *attrs) value(typ uint16, data []byte) {
	off := a.open(typ)
	a.put(unix.NFTA_DATA_VALUE, data)
	a.close(off)
}

// Send sends the batch as one transaction: the kernel applies all of it
// or none. An empty batch sends nothing.
func (c *Conn) Send(b *Batch) error {
	if b.err != nil {
		return fmt.Errorf("nftables batch: %w", b.err)
	}
	if b.n == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ready(); err != nil {
		return err
	}
	if c.batch == nil {
		s, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: c.nsFd})
		if err != nil {
			return fmt.Errorf("nftables: netlink: %w", err)
		}
		if err := s.SetOption(netlink.CapAcknowledge, true); err != nil {
			s.Close()
			return fmt.Errorf("nftables: netlink: %w", err)
		}
		c.batch = s
	}
	if err := c.send(b); err != nil {
		// Answers may be left unread: a fresh socket for the next batch.
		c.batch.Close()
		c.batch = nil
		return fmt.Errorf("nftables batch of %d messages: %w", b.n, err)
	}
	return nil
}

// send writes the batch in one sendmsg and reads the answers up to the
// acknowledgement of the last message; the first error answered fails it.
func (c *Conn) send(b *Batch) error {
	lastBuf := b.bufs[len(b.bufs)-1]
	ackFlags := lastBuf[b.last+6 : b.last+8]
	binary.NativeEndian.PutUint16(ackFlags, binary.NativeEndian.Uint16(ackFlags)|uint16(netlink.Acknowledge))
	bufs := append(b.bufs[:len(b.bufs):len(b.bufs)], appendMsg(nil, unix.NFNL_MSG_BATCH_END, uint16(netlink.Request), uint32(b.n+1), batchHeader))
	size := b.bytes + 2*(nlmsgHdrLen+len(batchHeader))
	raw, err := c.batch.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Write(func(fd uintptr) bool {
		if size > minBatchBytes {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size+minBatchBytes) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, size+minBatchBytes)
			}
		}
		_, serr = unix.SendmsgBuffers(int(fd), bufs, nil, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}, 0)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	// The answers are queued by now; the deadline only guards against a
	// kernel that would not answer.
	if err := c.batch.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	for {
		replies, err := c.batch.Receive()
		if err != nil {
			return err
		}
		for _, r := range replies {
			if r.Header.Type == netlink.Error && r.Header.Sequence == uint32(b.n) {
				return nil
			}
		}
	}
}

// DelSet queues the removal of s with its elements; no rule may refer to
// it.
func (b *Batch) DelSet(s Set) {
	b.add(unix.NFT_MSG_DELSET, 0, s.Table.Family, []netlink.Attribute{
		{Type: unix.NFTA_SET_TABLE, Data: cstring(s.Table.Name)},
		{Type: unix.NFTA_SET_NAME, Data: cstring(s.Name)},
	})
}

// AddCounter queues the creation of the named counter name of table t
// (nft's "counter name"), unless it exists: an existing counter keeps
// its values.
func (b *Batch) AddCounter(t *nftables.Table, name string) {
	b.add(unix.NFT_MSG_NEWOBJ, netlink.Create, t.Family, []netlink.Attribute{
		{Type: unix.NFTA_OBJ_TABLE, Data: cstring(t.Name)},
		{Type: unix.NFTA_OBJ_NAME, Data: cstring(name)},
		{Type: unix.NFTA_OBJ_TYPE, Data: be32(unix.NFT_OBJECT_COUNTER)},
		b.nested(unix.NFTA_OBJ_DATA,
			netlink.Attribute{Type: unix.NFTA_COUNTER_BYTES, Data: make([]byte, 8)},
			netlink.Attribute{Type: unix.NFTA_COUNTER_PACKETS, Data: make([]byte, 8)}),
	})
}

// DelCounter queues the removal of the named counter name of table t; no
// rule may refer to it.
func (b *Batch) DelCounter(t *nftables.Table, name string) {
	b.add(unix.NFT_MSG_DELOBJ, 0, t.Family, []netlink.Attribute{
		{Type: unix.NFTA_OBJ_TABLE, Data: cstring(t.Name)},
		{Type: unix.NFTA_OBJ_NAME, Data: cstring(name)},
		{Type: unix.NFTA_OBJ_TYPE, Data: be32(unix.NFT_OBJECT_COUNTER)},
	})
}
