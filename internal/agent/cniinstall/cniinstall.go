// Package cniinstall is the agent's controller of the node's CNI setup: it
// installs the podnet-cni binary with one hard link per plugin type into
// the CNI bin dir and writes the cluster network's conflist for the node's
// subnets and pod MTU, and rewrites it whenever they change.
package cniinstall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/podnet/podnet/internal/cnibin"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/atomicfile"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/cniconf"
)

// Config is where the plugins and the conflist go.
type Config struct {
	// Binary is the podnet-cni binary to install.
	Binary string
	// BinDir receives the binary and its links, ConfDir the conflist.
	BinDir, ConfDir string
	// IPAMDir is host-local's dataDir in the conflist.
	IPAMDir string
	// Chain lists the plugins chained after podnet in the conflist
	// (usually none: podnet honours portMappings and bandwidth itself).
	Chain []string
	// PolicyGate is the agent's policy gate socket, written in the
	// conflist for the podnet plugin ("": network policy off, no field).
	PolicyGate string
}

// Controller is the CNI install controller.
type Controller struct {
	env controller.Env
	cfg Config
	log *slog.Logger
}

// New returns the CNI install controller.
func New(env controller.Env, cfg Config) *Controller {
	return &Controller{env: env, cfg: cfg, log: env.Log.With("controller", "cni-install")}
}

// Name implements controller.Controller.
func (c *Controller) Name() string { return "cni-install" }

// Run installs the plugins, then writes the conflist once the node has
// its subnets and pod MTU and its network policy is settled (enforced in
// the kernel, or off: env.Policy), and again whenever they change; every
// resync period it checks both (a deleted or replaced file is put back).
// Writing the conflist is what lets the kubelet start pods: none gets a
// network before the policy table exists.
func (c *Controller) Run(ctx context.Context, h *controller.Health) error {
	h.NotReady("installing the plugins")
	if err := c.installPlugins(); err != nil {
		return err
	}
	resync := time.NewTicker(c.env.Resync)
	defer resync.Stop()
	for {
		self, haveSelf, selfChanged := c.env.Self.Load()
		mtu, haveMTU, mtuChanged := c.env.PodMTU.Load()
		_, havePolicy, policyChanged := c.env.Policy.Load()
		if !haveSelf || !haveMTU {
			h.NotReady("waiting for the node's subnets and pod MTU")
		} else if !havePolicy {
			h.NotReady("waiting for the network policy's first sync")
		} else if err := c.writeConflist(self, mtu); err != nil {
			h.NotReady("%v", err)
			c.log.Error("writing the CNI configuration failed", "err", err)
		} else {
			h.Ready()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-selfChanged:
		case <-mtuChanged:
		case <-policyChanged:
		case <-resync.C:
			if err := c.installPlugins(); err != nil {
				return err
			}
		}
	}
}

// installPlugins installs the binary, unless an identical one is there
// (which costs reading both binaries, so not on every change), with one
// link per plugin type the binary itself lists (`podnet-cni names`): the
// links match exactly the binary installed, and the agent need not link
// every plugin to know their names.
func (c *Controller) installPlugins() error {
	names, err := cnibin.Names(c.cfg.Binary)
	if err != nil {
		return fmt.Errorf("install plugins: %w", err)
	}
	return installPlugins(c.cfg.Binary, c.cfg.BinDir, names)
}

func (c *Controller) writeConflist(self cluster.Node, mtu int) error {
	var subnets []string
	for _, s := range []*net.IPNet{self.Subnet, self.Subnet6} {
		if s != nil {
			subnets = append(subnets, s.String())
		}
	}
	data, err := cniconf.Cluster{Subnets: subnets, MTU: mtu, IPAMDir: c.cfg.IPAMDir, Chain: c.cfg.Chain, PolicyGate: c.cfg.PolicyGate}.Conflist()
	if err != nil {
		return fmt.Errorf("CNI configuration: %w", err)
	}
	path := filepath.Join(c.cfg.ConfDir, cniconf.FileName)
	wrote, err := atomicfile.Write(path, data, 0o644)
	if err != nil {
		return err
	}
	if wrote {
		c.log.Info("wrote CNI configuration", "path", path, "subnets", subnets, "mtu", mtu)
	}
	return nil
}

// Cleanup removes the conflist; the plugin binaries stay, for the pods
// the node still runs (their DEL needs them).
func (c *Controller) Cleanup(context.Context) error {
	err := os.Remove(filepath.Join(c.cfg.ConfDir, cniconf.FileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
