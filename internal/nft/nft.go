// Package nft is podnet's nftables core: a connection to nftables in one
// network namespace, through netlink (never by running nft or iptables),
// on which each feature owns its tables, chains, rules, sets and maps.
//
// # What the core provides
//
//   - Transactions: Conn.Transact builds one netlink batch, which the
//     kernel applies atomically, from what it reads of the kernel's state,
//     and builds it again on fresh state when another writer changed what
//     it relied on (see below).
//   - Ownership: every rule a feature adds carries its owner (for the
//     plugins, the attachment identity network/containerID/ifname) as its
//     comment, in the userdata TLV format of libnftnl, so `nft list
//     ruleset` shows it. Conn.Replace makes an owner's rules in some chains
//     exactly the wanted ones, Conn.Check verifies them, Conn.DeleteOwned
//     removes the rules whose owner a predicate selects.
//   - Dumps: targeted listings of one chain's rules, one set's elements or
//     a table's chain names (Tx.Rules, Tx.Elements, Tx.Chains), redone
//     when the kernel flags them as interrupted by a commit, and lookups of
//     single elements by key (Tx.GetElements) that dump nothing.
//   - Sets and maps (Set): named sets and maps with concatenated keys,
//     intervals, verdict or data values, updated element by element:
//     Conn.SyncSet adds only the missing and deletes only the stale
//     elements in one transaction (the diff is the pure Diff), and
//     Conn.AddElements and Conn.DeleteElements change single elements.
//   - Named counters (nft's "counter name"): Batch.AddCounter and
//     Batch.DelCounter, read by Conn.Counters; for the policy data
//     plane's per-policy deny counts.
//   - Large transactions (Batch, Conn.Send): tens of thousands of
//     chains, rules and elements in one batch encoded here, with one
//     acknowledgement for the whole batch where Transact reads one (and a
//     rule's echo) per message; for the service proxy's table.
//
// The features live in packages of their own: podrules (the plugins'
// per-attachment rules: masquerade, MAC spoof check, portmap, firewall)
// and egress (the node agent's egress masquerade). A later controller
// (services, policy) owns a table of its own on the same core: its chains
// through Transact or a Batch, its sets and verdict maps through Set.
//
// # Transactions and concurrency
//
// Objects are created with "add" semantics (NLM_F_CREATE without
// NLM_F_EXCL), so creating what already exists neither fails nor disturbs
// its content. When a batch fails with ENOENT because a rule or element it
// deletes was removed by another process between the dump and the batch,
// the dump is redone and the batch retried. A transaction that keeps
// losing such races, or a dump that keeps being interrupted, fails with an
// error wrapping unix.EAGAIN: a transient condition the caller may retry
// (the CNI layer maps it to "try again later", 11).
package nft

import (
	"errors"
	"fmt"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TableName is the name of the tables the plugins and the agent's egress
// share, one per address family they need ("inet podnet", "bridge
// podnet"). A later feature may own a table of another name.
const TableName = "podnet"

// maxAttempts bounds how often a transaction is retried after losing a race
// with another process, and how often an interrupted dump is redone.
const maxAttempts = 10

// ErrClosed is returned by the methods of a closed Conn.
var ErrClosed = errors.New("nft: connection closed")

// Conn programs nftables in one network namespace; every mutation is one
// netlink transaction (one batch). A Conn is safe for concurrent use; its
// operations are serialized.
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

	batch *netlink.Conn // Send's socket; nil until used and after a failed batch
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
		// Acknowledgements without a copy of the request (capped): a
		// batch gets one per message, and copying every message back
		// doubles what a large batch moves.
		keep := func(s *netlink.Conn) error {
			c.sock = s
			return s.SetOption(netlink.CapAcknowledge, true)
		}
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
	if c.batch != nil {
		c.batch.Close()
		c.batch = nil
	}
	return nil
}

// read runs f, which dumps, with the connection locked and ready.
func (c *Conn) read(f func(*Tx) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ready(); err != nil {
		return err
	}
	return f(&Tx{c: c})
}

// Transact runs build, which reads the kernel's state through tx and
// queues one batch on it, and sends that batch; a build that queues
// nothing sends nothing. build reports whether the batch relies on what it
// read still being there (rules or elements to delete, a chain to add
// rules to): when such a batch fails with ENOENT, another process removed
// it in between, and build runs again on fresh state, up to maxAttempts
// times. The last error then wraps unix.EAGAIN.
func (c *Conn) Transact(build func(tx *Tx) (stale bool, err error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if err := c.ready(); err != nil {
			return err
		}
		c.queued = 0
		var stale bool
		stale, err = build(&Tx{c: c, attempt: attempt})
		if err == nil {
			if c.queued == 0 {
				return nil
			}
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
	// condition, for the caller to retry later.
	return &retryError{what: "nftables transaction kept losing races with other writers", err: err}
}

// retryError is a transient failure: it wraps unix.EAGAIN besides the
// last error seen.
type retryError struct {
	what string
	err  error
}

func (e *retryError) Error() string {
	return fmt.Sprintf("%s: gave up after %d attempts: %v", e.what, maxAttempts, e.err)
}

func (e *retryError) Unwrap() []error { return []error{unix.EAGAIN, e.err} }

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

// Tx is one batch being built by Conn.Transact, and the dumps it reads
// the kernel's state with. It is valid only inside the build function.
type Tx struct {
	c       *Conn
	attempt int // 0 for the first build of a transaction
}

// Retry tells whether this build follows a batch that failed because the
// kernel's state changed under it.
func (tx *Tx) Retry() bool { return tx.attempt > 0 }

// AddTable queues the creation of t unless it exists.
func (tx *Tx) AddTable(t *nftables.Table) {
	tx.c.nft.AddTable(t)
	tx.c.queued++
}

// DelTable queues the removal of t with everything in it, whether or
// not it exists (it is added first).
func (tx *Tx) DelTable(t *nftables.Table) {
	tx.c.nft.AddTable(t)
	tx.c.nft.DelTable(t)
	tx.c.queued += 2
}

// AddChain queues the creation of ch unless it exists.
func (tx *Tx) AddChain(ch *nftables.Chain) {
	tx.c.nft.AddChain(ch)
	tx.c.queued++
}

// FlushChain queues the removal of every rule of ch, which must exist.
func (tx *Tx) FlushChain(ch *nftables.Chain) {
	tx.c.nft.FlushChain(ch)
	tx.c.queued++
}

// DelChain queues the removal of ch with its rules, whether or not it
// exists (it is added first); nothing may refer to it.
func (tx *Tx) DelChain(ch *nftables.Chain) {
	tx.c.nft.AddChain(ch)
	tx.c.nft.DelChain(ch)
	tx.c.queued += 2
}

// AddRule queues r, appended to its chain, with owner as its comment
// (none when owner is empty).
func (tx *Tx) AddRule(r *nftables.Rule, owner Owner) {
	r.UserData = owner.comment()
	tx.c.nft.AddRule(r)
	tx.c.queued++
}

// DelRule queues the removal of a listed rule.
func (tx *Tx) DelRule(r Rule) error {
	t := &nftables.Table{Family: r.Family, Name: r.Table}
	if err := tx.c.nft.DelRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: r.Chain, Table: t}, Handle: r.Handle}); err != nil {
		return fmt.Errorf("delete rule %d of %s: %w", r.Handle, r.Chain, err)
	}
	tx.c.queued++
	return nil
}

// Rules dumps the rules of table t, or of its chain when chain is not
// empty; a missing table or chain has no rules. The expressions are kept
// for the rules whose owner is exprsOf (none when it is empty).
func (tx *Tx) Rules(t *nftables.Table, chain string, exprsOf Owner) ([]Rule, error) {
	return tx.c.listRules(t, chain, exprsOf)
}
