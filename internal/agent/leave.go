package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/datastore"
	"github.com/podnet/podnet/internal/fabric"
	"github.com/podnet/podnet/internal/nft/egress"
)

// Leave takes the node out of the cluster for good, with its agent
// stopped: its lease is revoked, so every other node drops its routes at
// once instead of after the grace period, and the node's fabric, egress
// rules, CNI configuration and remembered lease are removed. Pods left on
// the node lose their cross-node connectivity.
func (a *Agent) Leave(ctx context.Context) error {
	ul, err := a.underlay()
	if err != nil {
		return err
	}
	var errs []error
	node := a.loadLastLease()
	store, err := datastore.Open(ctx, a.datastoreConfig(ul.IP))
	if err != nil {
		errs = append(errs, err)
	} else {
		defer store.Close()
		// Taking the lease over gives back the node's own subnets under a
		// lease this process holds, which it then revokes.
		lease, err := store.Acquire(ctx, cluster.Node{Name: a.cfg.NodeName, IP: ul.IP, IP6: ul.IP6}, node, a.cfg.LeaseTTL)
		if err == nil {
			node = lease.Node()
			err = lease.Release(ctx)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("release the lease: %w", err))
		}
	}
	if node.Subnet != nil || node.Subnet6 != nil {
		fab, err := fabric.New(fabric.Config{Mode: cluster.Auto, Underlay: ul.Name, LocalIP: ul.IP, LocalIP6: ul.IP6, Subnet: node.Subnet, Subnet6: node.Subnet6}, nil)
		if err == nil {
			err = fab.Teardown()
			fab.Close()
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c, err := egress.New(0); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, c.Delete())
		c.Close()
	}
	for _, p := range []string{filepath.Join(a.cfg.CNIConfDir, cniconf.FileName), a.leaseFile()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
