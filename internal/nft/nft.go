// Package nft programs podnet's own nftables tables through netlink, never
// by running nft or iptables.
//
// # Layout
//
// podnet owns one table per address family it needs, each named "podnet",
// and never touches anybody else's tables:
//
//	table inet podnet {
//		chain masquerade {	# bridge/ptp ipMasq, one rule per pod address
//			type nat hook postrouting priority srcnat; policy accept;
//		}
//	}
//	table bridge podnet {
//		chain macspoofchk {	# bridge macspoofchk, one rule per attachment
//			type filter hook prerouting priority -300; policy accept;	# "dstnat"
//		}
//	}
//
// Every feature has its own base chain, so features never share or reorder
// each other's rules and a chain holds nothing but per-attachment rules:
// there is no static rule that would have to be added exactly once. Later
// features get chains of their own next to these: portmap's DNAT in inet
// prerouting/output (priority dstnat) and its hairpin SNAT in postrouting,
// the firewall plugin in inet forward (priority filter), the node agent's
// egress masquerade in inet postrouting, services and policy in sets and
// maps of the inet table.
//
// # Identity
//
// Every rule carries the identity of the attachment it belongs to
// (attachment.ID.String(): network/containerID/ifname) as its
// comment, in the userdata TLV format of libnftnl, so `nft list ruleset`
// shows it. DelAttachment and GC find rules by that comment alone, in any
// chain of any podnet table, so they need neither the pod's namespace nor
// the result of ADD.
//
// # Transactions and concurrency
//
// Each mutation is one netlink batch, which the kernel applies atomically:
// the table and chain an ADD needs are created in the same batch as its
// rules (unless its listing just showed the chain holding rules), with
// "add" semantics (NLM_F_CREATE without NLM_F_EXCL), so creating what
// already exists neither fails nor disturbs other rules. Reading is a
// targeted dump of one chain (ADD, CHECK) or of each podnet table (DEL, GC),
// redone when the kernel flags it as interrupted by a commit. When a batch
// fails with ENOENT because a rule it deletes was removed by another process
// between the dump and the batch, the dump is redone and the batch retried.
package nft

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniplugin"
)

// TableName is the name of every nftables table podnet owns.
const TableName = "podnet"

// Chain names, one base chain per feature.
const (
	// MasqueradeChain is the inet nat postrouting chain of ipMasq.
	MasqueradeChain = "masquerade"
	// MacSpoofChain is the bridge filter prerouting chain of macspoofchk.
	MacSpoofChain = "macspoofchk"
)

// maxAttempts bounds how often a transaction is retried after losing a race
// with another process.
const maxAttempts = 10

// maxCommentLen is the longest identity that fits a userdata comment: the
// kernel keeps at most 256 bytes of rule userdata, the TLV header takes
// two and the terminating NUL one.
const maxCommentLen = 253

var (
	inetTable   = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	bridgeTable = &nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName}

	// tables lists every podnet table: DelAttachment and GC search them all.
	tables = []*nftables.Table{inetTable, bridgeTable}

	acceptPolicy = nftables.ChainPolicyAccept

	masqChain = &nftables.Chain{
		Name:     MasqueradeChain,
		Table:    inetTable,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &acceptPolicy,
	}
	spoofChain = &nftables.Chain{
		Name:     MacSpoofChain,
		Table:    bridgeTable,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRef(-300), // as the reference's macspoofchk
		Policy:   &acceptPolicy,
	}
)

// ErrClosed is returned by the methods of a closed Conn.
var ErrClosed = errors.New("nft: connection closed")

// Conn programs podnet's tables in one network namespace; every mutation
// is one netlink transaction (one batch). A Conn is safe for concurrent
// use; its operations are serialized.
type Conn struct {
	mu     sync.Mutex
	nsFd   int
	closed bool
	nft    *nftables.Conn // batches; nil until dialed and after a failed batch
	nl     *netlink.Conn  // dumps; nil until dialed and after a failed dump
	buf    []byte         // dump receive buffer

	sock    *netlink.Conn // nft's socket, to size its buffers
	sockbuf int           // buffer size last requested on sock
	queued  int           // messages queued in nft since the last flush
}

// New opens a connection to nftables in the network namespace nsFd refers
// to; nsFd 0 is the calling thread's namespace.
func New(nsFd int) (*Conn, error) {
	c := &Conn{nsFd: nsFd}
	if err := c.ready(); err != nil {
		c.dropNFT()
		c.dropNL()
		return nil, err
	}
	return c, nil
}

// ready dials the sockets that are not open. The caller holds mu.
func (c *Conn) ready() error {
	if c.closed {
		return ErrClosed
	}
	if c.nft == nil {
		c.sock, c.sockbuf, c.queued = nil, 0, 0
		keep := func(s *netlink.Conn) error { c.sock = s; return nil }
		opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(keep)}
		if c.nsFd != 0 {
			opts = append(opts, nftables.WithNetNSFd(c.nsFd))
		}
		n, err := nftables.New(opts...)
		if err != nil {
			return fmt.Errorf("nftables: netlink: %w", err)
		}
		c.nft = n
	}
	if c.nl == nil {
		nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: c.nsFd})
		if err != nil {
			return fmt.Errorf("nftables: netlink: %w", err)
		}
		c.nl = nl
	}
	return nil
}

// dropNFT closes the batch socket; a failed batch may leave queued
// messages, unread answers or a sticky error in it.
func (c *Conn) dropNFT() {
	if c.nft != nil {
		_ = c.nft.CloseLasting()
		c.nft, c.sock = nil, nil
	}
}

// dropNL closes the dump socket; the rest of an abandoned dump would
// block the next one.
func (c *Conn) dropNL() {
	if c.nl != nil {
		_ = c.nl.Close()
		c.nl = nil
	}
}

// Close releases the connection's netlink sockets.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.dropNFT()
	c.dropNL()
	return nil
}

// DelAttachment removes every rule of the attachment from all of podnet's
// tables, whatever feature added it, in one transaction. It needs nothing
// but the attachment's identity (not the pod's namespace, not the result
// of ADD), and succeeds when there is nothing to remove.
func (c *Conn) DelAttachment(a attachment.ID) error {
	id := a.String()
	err := c.transact(func() (bool, error) {
		rules, err := c.listAll()
		if err != nil {
			return false, err
		}
		return c.queueDeletes(rules, func(r ruleRef) bool { return r.comment == id })
	})
	if err != nil {
		return fmt.Errorf("delete nftables rules of %s: %w", id, err)
	}
	return nil
}

// GC removes, in one transaction, every rule of the attachments of network
// for which keep returns false. Rules of other networks and rules without
// an attachment identity are left alone. keep runs with c locked and must
// not call c.
func (c *Conn) GC(network string, keep func(attachment.ID) bool) error {
	err := c.transact(func() (bool, error) {
		rules, err := c.listAll()
		if err != nil {
			return false, err
		}
		return c.queueDeletes(rules, func(r ruleRef) bool {
			a, err := attachment.Parse(r.comment)
			return err == nil && a.Network == network && !keep(a)
		})
	})
	if err != nil {
		return fmt.Errorf("garbage-collect nftables rules of network %s: %w", network, err)
	}
	return nil
}

// Attachments lists the attachments of network that own rules in podnet's
// tables, each once: what DEL or GC has left behind, when called after
// them. It only reads.
func (c *Conn) Attachments(network string) ([]attachment.ID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ready(); err != nil {
		return nil, err
	}
	rules, err := c.listAll()
	if err != nil {
		return nil, err
	}
	seen := map[attachment.ID]bool{}
	var out []attachment.ID
	for _, r := range rules {
		a, err := attachment.Parse(r.comment)
		if err != nil || a.Network != network || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, a)
	}
	return out, nil
}

// replace makes the attachment's rules in chain exactly rules, in one
// transaction that also creates the chain's table and the chain unless the
// listing showed the chain exists (it had rules): re-adding an existing
// base chain costs the kernel more than the rest of the batch.
func (c *Conn) replace(chain *nftables.Chain, a attachment.ID, rules []*nftables.Rule) error {
	return c.replaceChains(a, []chainRules{{chain, rules}})
}

// chainRules is the set of rules an attachment wants in one chain.
type chainRules struct {
	chain *nftables.Chain
	rules []*nftables.Rule
}

// replaceChains makes the attachment's rules in each listed chain exactly the
// listed rules, in one transaction. A chain that gets rules is created
// (with its table) unless the listing showed it holding rules; a chain
// listed without rules only loses the attachment's old ones. Chains are
// created before any rule is added, so a rule may jump to a chain created
// in the same batch.
func (c *Conn) replaceChains(a attachment.ID, sets []chainRules) error {
	id := a.String()
	comment, err := commentOf(a)
	if err != nil {
		return err
	}
	return c.transact(func() (bool, error) {
		stale := false
		olds := make([][]ruleRef, len(sets))
		tablesAdded := map[*nftables.Table]bool{}
		for i, s := range sets {
			old, err := c.list(s.chain.Table, s.chain.Name, "")
			if err != nil {
				return false, err
			}
			olds[i] = old
			if len(old) > 0 {
				stale = true
				continue
			}
			if len(s.rules) == 0 {
				continue
			}
			if !tablesAdded[s.chain.Table] {
				c.nft.AddTable(s.chain.Table)
				tablesAdded[s.chain.Table] = true
				c.queued++
			}
			c.nft.AddChain(s.chain)
			c.queued++
		}
		for _, old := range olds {
			if _, err := c.queueDeletes(old, func(r ruleRef) bool { return r.comment == id }); err != nil {
				return false, err
			}
		}
		for _, s := range sets {
			for _, r := range s.rules {
				r.Table, r.Chain, r.UserData = s.chain.Table, s.chain, comment
				c.nft.AddRule(r)
				c.queued++
			}
		}
		return stale, nil
	})
}

// queueDeletes queues the deletion of the listed rules that match and
// reports whether it queued any.
func (c *Conn) queueDeletes(rules []ruleRef, match func(ruleRef) bool) (bool, error) {
	queued := false
	for _, r := range rules {
		if !match(r) {
			continue
		}
		t := &nftables.Table{Family: r.family, Name: r.table}
		if err := c.nft.DelRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: r.chain, Table: t}, Handle: r.handle}); err != nil {
			return false, err
		}
		queued = true
		c.queued++
	}
	return queued, nil
}

// transact runs build, which reads the kernel's state and queues one batch,
// and sends that batch. build reports whether the batch relies on what it
// read still being there (rules to delete, a chain to add rules to): when
// such a batch fails with ENOENT, another process removed it in between,
// and build runs again on fresh state.
func (c *Conn) transact(build func() (stale bool, err error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if err := c.ready(); err != nil {
			return err
		}
		c.queued = 0
		var stale bool
		stale, err = build()
		if err == nil {
			c.sizeBuffers()
			if err = c.nft.Flush(); err == nil {
				return nil
			}
		}
		c.dropNFT()
		if !stale || !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	// Other writers keep changing what the batch relies on: a transient
	// condition, which the runtime is told to retry later (11).
	return cniplugin.Wrap(types.ErrTryAgainLater, "nftables transaction kept losing races with other writers",
		fmt.Errorf("gave up after %d attempts: %w", maxAttempts, err))
}

// Socket buffer sizing: a batch is sent in one sendmsg, which fails with
// EMSGSIZE when it exceeds the send buffer, and the kernel answers every
// message of it with its own acknowledgement, queued before Flush reads
// any, which overflows a default receive buffer (ENOBUFS) at a few hundred
// messages: a GC after a crash of a full node. As libnftables does, both
// buffers are grown to fit the batch, with the FORCE variants where the
// process has CAP_NET_ADMIN (as it must to program nftables at all).
const (
	msgBytes      = 2048 // per message, sent or acknowledged, with margin
	minBatchBytes = 128 << 10
)

func (c *Conn) sizeBuffers() {
	want := c.queued * msgBytes
	if want < minBatchBytes || want <= c.sockbuf || c.sock == nil {
		return
	}
	raw, err := c.sock.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], want) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], want)
			}
		}
	})
	c.sockbuf = want
}

// commentOf returns the attachment's identity as rule userdata.
func commentOf(a attachment.ID) ([]byte, error) {
	id := a.String()
	if _, err := attachment.Parse(id); err != nil {
		return nil, fmt.Errorf("invalid attachment identity: %w", err)
	}
	if len(id) > maxCommentLen {
		return nil, fmt.Errorf("attachment identity %q is longer than the %d bytes an nftables comment holds", id, maxCommentLen)
	}
	return userdata.AppendString(nil, userdata.TypeComment, id), nil
}

// commentFrom returns the comment stored in rule userdata, or "". Unlike
// userdata.GetString it never panics on a malformed TLV another tool wrote.
func commentFrom(ud []byte) string {
	for len(ud) >= 2 {
		typ, n := userdata.Type(ud[0]), int(ud[1])
		if len(ud) < 2+n {
			return ""
		}
		if typ == userdata.TypeComment {
			return strings.TrimSuffix(string(ud[2:2+n]), "\x00")
		}
		ud = ud[2+n:]
	}
	return ""
}
