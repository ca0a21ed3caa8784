// Package tuning is the tuning plugin: a chained plugin that sets network
// sysctls in the pod's namespace and attributes of its interface (mac,
// mtu, promisc, allmulti, txQLen), with the reference tuning's
// configuration, CNI_ARGS, args and the "mac" capability. The values it
// replaces are saved, crash-safely and keyed by attachment identity, and
// put back on DEL.
package tuning

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/cniplugin"
)

// DefaultDataDir is where saved values live unless the configuration's
// dataDir says otherwise: under /run, so they die with the boot, as the
// pods do.
const DefaultDataDir = "/run/podnet/tuning"

// AllowlistFile, when it exists, lists regular expressions (one a line)
// that every sysctl key must match, as with the reference plugin.
var AllowlistFile = "/etc/cni/tuning/allowlist.conf"

// Conf is the tuning plugin's configuration.
type Conf struct {
	cniplugin.NetConf
	DataDir  string  `json:"dataDir,omitempty"`
	SysCtl   Sysctls `json:"sysctl,omitempty"`
	Mac      string  `json:"mac,omitempty"`
	Promisc  bool    `json:"promisc,omitempty"`
	MTU      int     `json:"mtu,omitempty"`
	Allmulti *bool   `json:"allmulti,omitempty"`
	TxQLen   *int    `json:"txQLen,omitempty"`

	RuntimeConfig struct {
		Mac string `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	Args *struct {
		CNI *Args `json:"cni"`
	} `json:"args,omitempty"`

	// mac is the parsed hardware address to set, nil for none.
	mac net.HardwareAddr
	// keys are the validated sysctls in the order they are applied.
	keys []sysctl
}

// Args are the per-attachment overrides a runtime may send in args.cni.
type Args struct {
	SysCtl   Sysctls `json:"sysctl,omitempty"`
	Mac      *string `json:"mac,omitempty"`
	Promisc  *bool   `json:"promisc,omitempty"`
	MTU      *int    `json:"mtu,omitempty"`
	Allmulti *bool   `json:"allmulti,omitempty"`
	TxQLen   *int    `json:"txQLen,omitempty"`
}

// Sysctl is one key and value of the sysctl object.
type Sysctl struct{ Key, Value string }

// Sysctls is the sysctl object, in the order written; a key given twice is
// an error, as in the reference.
type Sysctls []Sysctl

// UnmarshalJSON reads a JSON object of strings, keeping its order.
func (s *Sysctls) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		*s = nil
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("sysctl must be an object of strings")
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := t.(string)
		var v string
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("sysctl %q: value must be a string", k)
		}
		if seen[k] {
			return fmt.Errorf("duplicated sysctl key %q", k)
		}
		seen[k] = true
		*s = append(*s, Sysctl{Key: k, Value: v})
	}
	return nil
}

// MarshalJSON writes the object back.
func (s Sysctls) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, kv := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(kv.Key)
		v, _ := json.Marshal(kv.Value)
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// set overrides or appends a key.
func (s *Sysctls) set(kv Sysctl) {
	for i := range *s {
		if (*s)[i].Key == kv.Key {
			(*s)[i].Value = kv.Value
			return
		}
	}
	*s = append(*s, kv)
}

// decode reads the configuration and checks what names state paths; DEL
// and GC need no more.
func decode(data []byte) (*Conf, error) {
	c := &Conf{}
	if err := cniplugin.Decode(data, c); err != nil {
		return nil, err
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if !safeName(c.Name) {
		return nil, cniplugin.Invalid("network name %q cannot name a state directory", c.Name)
	}
	return c, nil
}

// load reads the configuration with the reference's precedence — the
// configuration, then CNI_ARGS MAC, then the mac capability, then
// args.cni — and validates every value before anything is changed.
func load(data []byte, envArgs, ifName string) (*Conf, error) {
	c, err := decode(data)
	if err != nil {
		return nil, err
	}
	if !safeName(ifName) {
		return nil, cniplugin.Errorf(types.ErrInvalidEnvironmentVariables, "interface name %q is not valid", ifName)
	}
	args, err := cniplugin.ParseArgs(envArgs)
	if err != nil {
		return nil, err
	}
	if args.MAC != "" {
		c.Mac = string(args.MAC)
	}
	if c.RuntimeConfig.Mac != "" {
		c.Mac = c.RuntimeConfig.Mac
	}
	if c.Args != nil && c.Args.CNI != nil {
		a := c.Args.CNI
		for _, kv := range a.SysCtl {
			c.SysCtl.set(kv)
		}
		if a.Mac != nil {
			c.Mac = *a.Mac
		}
		if a.Promisc != nil {
			c.Promisc = *a.Promisc
		}
		if a.MTU != nil {
			c.MTU = *a.MTU
		}
		if a.Allmulti != nil {
			c.Allmulti = a.Allmulti
		}
		if a.TxQLen != nil {
			c.TxQLen = a.TxQLen
		}
	}
	if c.Mac != "" {
		if c.mac, err = net.ParseMAC(c.Mac); err != nil {
			return nil, cniplugin.Invalid("invalid mac %q: %v", c.Mac, err)
		}
		if err := cniplugin.CheckMAC("mac", c.mac); err != nil {
			return nil, err
		}
	}
	if c.MTU < 0 || c.MTU > 65535 {
		return nil, cniplugin.Invalid("invalid mtu %d", c.MTU)
	}
	if c.TxQLen != nil && *c.TxQLen < 0 {
		return nil, cniplugin.Invalid("invalid txQLen %d", *c.TxQLen)
	}
	allow, err := readAllowlist()
	if err != nil {
		return nil, err
	}
	for _, kv := range c.SysCtl {
		k, err := parseKey(kv.Key, ifName, allow)
		if err != nil {
			return nil, err
		}
		k.value = kv.Value
		c.keys = append(c.keys, k)
	}
	return c, nil
}

// changesLink tells whether any interface attribute is configured.
func (c *Conf) changesLink() bool {
	return c.mac != nil || c.MTU != 0 || c.Promisc || c.Allmulti != nil || c.TxQLen != nil
}

// sysctl is a validated key: its path under /proc/sys and its value.
type sysctl struct {
	key   string // as configured
	path  string // slashed, relative to /proc/sys
	value string
}

// perInterface are the sysctl trees whose fourth element names an
// interface.
var perInterface = map[string]bool{
	"ipv4/conf": true, "ipv6/conf": true, "ipv4/neigh": true, "ipv6/neigh": true,
}

// parseKey turns a dotted (net.ipv4.conf.IFNAME.arp_notify) or slashed
// (net/ipv4/conf/eth0.100/arp_notify) key into its path under /proc/sys.
// Only the network's sysctls (net/…) are allowed, every element must be a
// plain name (no "..", no empty element: nothing can leave /proc/sys/net),
// per-interface trees must name the interface and the setting, and with an
// allowlist file the key must match one of its expressions. The element
// IFNAME stands for the attachment's interface.
func parseKey(key, ifName string, allow []*regexp.Regexp) (sysctl, error) {
	sep := "."
	if strings.Contains(key, "/") {
		sep = "/"
	}
	parts := strings.Split(key, sep)
	for i, p := range parts {
		if p == "IFNAME" {
			parts[i] = ifName
			p = ifName
		}
		if p == "" || p == "." || p == ".." || strings.ContainsAny(p, "/\x00") {
			return sysctl{}, cniplugin.Invalid("invalid sysctl key %q: element %q is not a plain name", key, p)
		}
	}
	if len(parts) < 3 || parts[0] != "net" {
		return sysctl{}, cniplugin.Invalid("invalid sysctl key %q: only net.* sysctls of the pod's namespace may be set", key)
	}
	if perInterface[parts[1]+"/"+parts[2]] && len(parts) < 5 {
		return sysctl{}, cniplugin.Invalid("invalid sysctl key %q: net.%s.%s.<interface>.<setting> expected", key, parts[1], parts[2])
	}
	if allow != nil {
		ok := false
		for _, re := range allow {
			if re.MatchString(key) {
				ok = true
				break
			}
		}
		if !ok {
			return sysctl{}, cniplugin.Invalid("sysctl %q is not allowed by %s", key, AllowlistFile)
		}
	}
	p := filepath.Join(parts...)
	if !strings.HasPrefix(filepath.Join("/proc/sys", p), "/proc/sys/net/") {
		return sysctl{}, cniplugin.Invalid("invalid sysctl key %q", key)
	}
	return sysctl{key: key, path: p}, nil
}

// readAllowlist reads the allowlist file; nil when there is none.
func readAllowlist() ([]*regexp.Regexp, error) {
	data, err := os.ReadFile(AllowlistFile)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read sysctl allowlist: %w", err)
	}
	out := []*regexp.Regexp{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		re, err := regexp.Compile(line)
		if err != nil {
			return nil, cniplugin.Invalid("sysctl allowlist %s: %v", AllowlistFile, err)
		}
		out = append(out, re)
	}
	return out, nil
}

// safeName tells whether a name can be one element of a path.
func safeName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00")
}

func parseMAC(s string) (net.HardwareAddr, error) {
	m, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("invalid mac %q: %w", s, err)
	}
	return m, nil
}
