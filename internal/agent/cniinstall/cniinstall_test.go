package cniinstall

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/testing/poll"
)

// TestConflistAfterPolicy: the conflist, which lets the kubelet start
// pods, is written only once the network policy is settled (env.Policy),
// though the node's subnets and MTU are known before: no pod gets a
// network before its policy can be enforced.
func TestConflistAfterPolicy(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "podnet-cni")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho podnet\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := controller.NewEnv()
	env.Log, env.Resync = slog.New(slog.NewTextHandler(io.Discard, nil)), time.Minute
	env.Self.Set(cluster.Node{Name: "n1", Subnet: &net.IPNet{IP: net.IPv4(10, 244, 1, 0).To4(), Mask: net.CIDRMask(24, 32)}})
	env.PodMTU.Set(1450)
	cfg := Config{Binary: bin, BinDir: filepath.Join(dir, "bin"), ConfDir: filepath.Join(dir, "net.d"), IPAMDir: filepath.Join(dir, "ipam")}
	c := New(env, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	h := &controller.Health{}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	conflist := filepath.Join(cfg.ConfDir, cniconf.FileName)
	poll.Until(t, 10*time.Second, "waiting for the policy", func() bool {
		_, reason := h.State()
		return reason == "waiting for the network policy's first sync"
	})
	if _, err := os.Stat(conflist); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("conflist written before the network policy's first sync (stat: %v)", err)
	}
	env.Policy.Set(true)
	poll.Until(t, 10*time.Second, "the conflist", func() bool {
		ready, _ := h.State()
		_, err := os.Stat(conflist)
		return ready && err == nil
	})
}
