// Package egress is the agent's controller of the egress masquerade: pods
// reach the world outside the cluster through the node's address, while
// pod-to-pod traffic keeps its source. With the feature off, it removes
// the rules.
package egress

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/podnet/podnet/internal/agent/controller"
	nftegress "github.com/podnet/podnet/internal/nft/egress"
)

// Controller is the egress controller.
type Controller struct {
	env     controller.Env
	enabled bool
	log     *slog.Logger
}

// New returns the egress controller; enabled says whether the node
// masquerades.
func New(env controller.Env, enabled bool) *Controller {
	return &Controller{env: env, enabled: enabled, log: env.Log.With("controller", "egress")}
}

// Name implements controller.Controller.
func (c *Controller) Name() string { return "egress" }

// Run converges the egress rules to the cluster CIDRs at start and every
// resync period (or removes them when the feature is off).
func (c *Controller) Run(ctx context.Context, h *controller.Health) error {
	if !c.enabled {
		if err := c.Cleanup(ctx); err != nil {
			return err
		}
		h.Ready()
		<-ctx.Done()
		return nil
	}
	rules, err := nftegress.New(c.env.NetNSFd())
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer rules.Close()
	resync := time.NewTicker(c.env.Resync)
	defer resync.Stop()
	for {
		if wrote, err := rules.Sync(c.env.Cluster.CIDRs()); err != nil {
			h.NotReady("%v", err)
			c.log.Error("egress masquerade", "err", err)
		} else {
			if wrote {
				c.log.Info("egress masquerade programmed")
			}
			h.Ready()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
		}
	}
}

// Cleanup removes the egress rules.
func (c *Controller) Cleanup(context.Context) error {
	rules, err := nftegress.New(c.env.NetNSFd())
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer rules.Close()
	return rules.Delete()
}
