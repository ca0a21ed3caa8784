package main

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"os"
	"strings"
)

// The peer the issue asks for, sigs.k8s.io/kube-network-policies, is not
// run: v0.8.0 sends the first packet of every connection of a policed pod
// to userspace through nftables' queue statement (its
// pkg/networkpolicy/controller.go, go-nfqueue), which the kernel offers
// only with CONFIG_NFT_QUEUE.
const (
	peerName    = "sigs.k8s.io/kube-network-policies v0.8.0"
	peerKconfig = "CONFIG_NFT_QUEUE"
	// peerObserved is what v0.8.0 did on this machine's kernel (built from
	// the Go module proxy in a throwaway directory, run on 2026-12-03 in a
	// node namespace of a bench/policy lab with a service account of its
	// API server, -disable-nri).
	peerObserved = "its first sync logs `\"syncing nftables rules\" error=<conn.Receive: netlink receive: no such file or directory ...>` " +
		"and leaves no table in the node (the kernel refuses the whole transaction); in a throwaway namespace nft itself fails the same way on " +
		"`add rule inet t c ip saddr 10.0.0.1 queue num 100` (\"Error: Could not process rule: No such file or directory\", the `queue` statement underlined) " +
		"while the same rule with `counter` is accepted."
)

// peerInfo says why the peer's column is missing.
type peerInfo struct {
	Name string `json:"name"`
	// Kernel is the kernel's configuration line of CONFIG_NFT_QUEUE
	// (from /proc/config.gz), or why it could not be read.
	Kernel string `json:"kernel"`
	// Observed is the peer's own error on this kernel.
	Observed string `json:"observed"`
}

// peerEvidence checks the running kernel for the peer's need.
func peerEvidence() peerInfo {
	return peerInfo{Name: peerName, Kernel: kconfig("/proc/config.gz", peerKconfig), Observed: peerObserved}
}

// kconfig is the line of the gzipped kernel configuration at path that
// sets or leaves unset the option name.
func kconfig(path, name string) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("unknown (%v)", err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Sprintf("unknown (%s: %v)", path, err)
	}
	sc := bufio.NewScanner(z)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+"=") || line == "# "+name+" is not set" {
			return line
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Sprintf("unknown (%s: %v)", path, err)
	}
	return fmt.Sprintf("# %s absent from %s (not set)", name, path)
}
