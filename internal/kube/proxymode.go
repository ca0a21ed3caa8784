package kube

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ProxyMode is how kube-proxy programs a node's Services.
type ProxyMode string

// kube-proxy's modes the lab runs.
const (
	// ProxyIPTables is kube-proxy's iptables mode (its default on Linux).
	ProxyIPTables ProxyMode = "iptables"
	// ProxyNFTables is kube-proxy's nftables mode: it runs the nft
	// command, which must be at least MinNFTVersion on ToolPath.
	ProxyNFTables ProxyMode = "nftables"
)

// known tells whether kube-proxy is given m ("" is ProxyIPTables).
func (m ProxyMode) known() bool { return m == "" || m == ProxyIPTables || m == ProxyNFTables }

// OrDefault is m, or ProxyIPTables when m is empty.
func (m ProxyMode) OrDefault() ProxyMode {
	if m == "" {
		return ProxyIPTables
	}
	return m
}

// MinNFTVersion is the oldest nft command kube-proxy's nftables mode
// accepts.
var MinNFTVersion = [3]int{1, 0, 1}

// nftVersion finds the version in `nft --version`'s output
// ("nftables v1.0.6 (Lester Gooch #5)").
var nftVersion = regexp.MustCompile(`v(\d+)\.(\d+)(?:\.(\d+))?`)

// CheckNFT tells why kube-proxy's nftables mode cannot run on this
// machine: no nft on ToolPath (the nodes' daemons' PATH), or one older
// than MinNFTVersion.
func CheckNFT() error {
	path, err := lookTool("nft")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %w", path, err)
	}
	v, err := parseNFTVersion(string(out))
	if err != nil {
		return fmt.Errorf("%s --version: %w", path, err)
	}
	if slices.Compare(v[:], MinNFTVersion[:]) < 0 {
		return fmt.Errorf("%s is nftables v%d.%d.%d; kube-proxy's nftables mode needs at least v%d.%d.%d",
			path, v[0], v[1], v[2], MinNFTVersion[0], MinNFTVersion[1], MinNFTVersion[2])
	}
	return nil
}

// parseNFTVersion reads major, minor and patch from nft --version.
func parseNFTVersion(out string) ([3]int, error) {
	m := nftVersion.FindStringSubmatch(out)
	if m == nil {
		return [3]int{}, fmt.Errorf("no version in %q", strings.TrimSpace(out))
	}
	var v [3]int
	for i, s := range m[1:] {
		if s != "" {
			v[i], _ = strconv.Atoi(s)
		}
	}
	return v, nil
}

// lookTool finds a program on ToolPath.
func lookTool(name string) (string, error) {
	for _, dir := range strings.Split(ToolPath, ":") {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("no %s on the nodes' PATH %s (Debian: apt-get install nftables)", name, ToolPath)
}
