package dataplane

// THROWAWAY (branch svc-controller): the smallest implementation of the
// dataplane API the controller is written against, so that the controller
// compiles and its tests run before the real dataplane lands. It creates
// and removes the table and counts what it is given; it programs no
// service. The integrator takes the dataplane branch's table.go instead.

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/google/nftables"
)

// TableName is podnet's service table, an inet table.
const TableName = "podnet-services"

// Config is where and how the table is programmed.
type Config struct {
	// NetNSFd is the node's network namespace; 0: the caller's.
	NetNSFd int
	// ClusterCIDRs are the cluster's pod networks.
	ClusterCIDRs []netip.Prefix
	// NodePortAddresses: NodePorts are served on local addresses inside
	// these; empty: on every local address of the node.
	NodePortAddresses []netip.Prefix
}

// Stats tells what a Sync programmed.
type Stats struct {
	Full                                         bool
	Services, Endpoints, Chains, Elements, Rules int
	Written                                      int
	ConntrackFlushed                             int
}

// Table is the service table of one network namespace.
type Table struct {
	cfg    Config
	mu     sync.Mutex
	synced bool
	last   map[string]bool
}

// New returns the table of cfg's namespace.
func New(cfg Config) (*Table, error) {
	return &Table{cfg: cfg}, nil
}

// Sync converges the kernel to services.
func (t *Table) Sync(services []Service) (Stats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := nftables.New(nftables.WithNetNSFd(t.cfg.NetNSFd))
	if err != nil {
		return Stats{}, fmt.Errorf("nftables: %w", err)
	}
	c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	if err := c.Flush(); err != nil {
		return Stats{}, fmt.Errorf("nftables: table %s: %w", TableName, err)
	}
	st := Stats{Full: !t.synced, Services: len(services)}
	now := make(map[string]bool, len(services))
	for _, s := range services {
		if s.Family != IPv4 && s.Family != IPv6 {
			return Stats{}, errors.New("service " + s.ID() + ": no family")
		}
		now[s.ID()] = true
		if !t.last[s.ID()] {
			st.Written++
		}
		st.Endpoints += len(s.Internal)
	}
	for id := range t.last {
		if !now[id] {
			st.Written++
		}
	}
	t.synced, t.last = true, now
	return st, nil
}

// Close releases the table's resources; the kernel state stays.
func (t *Table) Close() error { return nil }

// Cleanup removes podnet's service table; idempotent.
func Cleanup(netnsFd int) error {
	c, err := nftables.New(nftables.WithNetNSFd(netnsFd))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("nftables: list tables: %w", err)
	}
	for _, tb := range tables {
		if tb.Name == TableName {
			c.DelTable(tb)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("nftables: delete table %s: %w", TableName, err)
			}
		}
	}
	return nil
}
