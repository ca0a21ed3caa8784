package sandbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
)

// Link is a network interface as observed in a namespace.
type Link struct {
	Name        string
	Type        string // "veth", "bridge", "device" (lo), …
	Alias       string
	Index       int
	MasterIndex int
	ParentIndex int // a veth's peer index (in the peer's namespace)
	MAC         string
	MTU         int
	Up          bool
	Addrs       []net.IPNet // global and loopback addresses, no link-local
}

// Route is a route as observed in a namespace's main table.
type Route struct {
	Dst   string // CIDR, "default" for 0.0.0.0/0 and ::/0
	Gw    string // "" when direct
	Dev   string
	Scope netlink.Scope
}

func (r Route) String() string {
	s := r.Dst
	if r.Gw != "" {
		s += " via " + r.Gw
	}
	return s + " dev " + r.Dev
}

// Links lists the interfaces of a namespace with their addresses.
func Links(ns *netns.NS) ([]Link, error) {
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", ns.Path(), err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", ns.Path(), err)
	}
	out := make([]Link, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		lk := Link{
			Name: a.Name, Type: l.Type(), Alias: a.Alias, Index: a.Index,
			MasterIndex: a.MasterIndex, ParentIndex: a.ParentIndex,
			MAC: a.HardwareAddr.String(), MTU: a.MTU, Up: a.Flags&net.FlagUp != 0,
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", a.Name, err)
		}
		for _, ad := range addrs {
			// The kernel's own IPv6 link-locals vary per run; podnet's
			// (a routed pod's gateway) are added without DAD.
			if ad.IP.To4() == nil && ad.IP.IsLinkLocalUnicast() && ad.Flags&unix.IFA_F_NODAD == 0 {
				continue
			}
			lk.Addrs = append(lk.Addrs, *ad.IPNet)
		}
		out = append(out, lk)
	}
	return out, nil
}

// FindLink returns the named link of a list.
func FindLink(links []Link, name string) (Link, bool) {
	for _, l := range links {
		if l.Name == name {
			return l, true
		}
	}
	return Link{}, false
}

// LinksOfType returns the links of one kind ("veth", "bridge", …).
func LinksOfType(links []Link, typ string) []Link {
	var out []Link
	for _, l := range links {
		if l.Type == typ {
			out = append(out, l)
		}
	}
	return out
}

// HasAddr tells whether the link carries the address (IP and prefix).
func (l Link) HasAddr(a net.IPNet) bool {
	for _, x := range l.Addrs {
		if x.IP.Equal(a.IP) && bytes.Equal(x.Mask, a.Mask) {
			return true
		}
	}
	return false
}

// Routes lists the IPv4 and IPv6 routes of a namespace's main table.
func Routes(ns *netns.NS) ([]Route, error) {
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", ns.Path(), err)
	}
	defer h.Close()
	names := map[int]string{}
	if links, err := h.LinkList(); err == nil {
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	var out []Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := h.RouteList(nil, fam)
		if err != nil {
			return nil, fmt.Errorf("list routes in %s: %w", ns.Path(), err)
		}
		for _, r := range rs {
			if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() || r.Dst != nil && r.Dst.IP.IsMulticast() {
				continue
			}
			rt := Route{Dst: "default", Dev: names[r.LinkIndex], Scope: r.Scope}
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 || !r.Dst.IP.IsUnspecified() {
					rt.Dst = r.Dst.String()
				}
			}
			if r.Gw != nil {
				rt.Gw = r.Gw.String()
			}
			out = append(out, rt)
		}
	}
	return out, nil
}

// HasRoute tells whether a route to dst (a CIDR, "default" or a
// 0.0.0.0/0-style default) exists, through gw when gw is not empty.
func HasRoute(routes []Route, dst, gw string) bool {
	if _, n, err := net.ParseCIDR(dst); err == nil {
		if ones, _ := n.Mask.Size(); ones == 0 {
			dst = "default"
		} else {
			dst = n.String()
		}
	}
	for _, r := range routes {
		if r.Dst == dst && (gw == "" || r.Gw == gw) {
			return true
		}
	}
	return false
}

// Rule is an nftables rule as `nft -j list ruleset` reports it.
type Rule struct {
	Family  string `json:"family"`
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	Handle  int    `json:"handle"`
	Comment string `json:"comment"`
}

func (r Rule) String() string {
	return fmt.Sprintf("%s %s %s #%d %q", r.Family, r.Table, r.Chain, r.Handle, r.Comment)
}

// Ruleset returns `nft list ruleset` of a namespace, as text. It runs the
// nft tool inside the namespace: observation only, tests may exec tools.
func Ruleset(ns *netns.NS) (string, error) {
	out, err := nft(ns, "list", "ruleset")
	return string(out), err
}

// Rules lists every nftables rule of a namespace.
func Rules(ns *netns.NS) ([]Rule, error) {
	out, err := nft(ns, "-j", "list", "ruleset")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("parse nft -j output: %w", err)
	}
	var rules []Rule
	for _, obj := range doc.Nftables {
		raw, ok := obj["rule"]
		if !ok {
			continue
		}
		var r Rule
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("parse nft rule: %w", err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// PodnetRules returns the rules of podnet's own tables (named podnet…).
func PodnetRules(ns *netns.NS) ([]Rule, error) {
	all, err := Rules(ns)
	if err != nil {
		return nil, err
	}
	var out []Rule
	for _, r := range all {
		if strings.HasPrefix(r.Table, "podnet") {
			out = append(out, r)
		}
	}
	return out, nil
}

// IPTablesRules lists the iptables and ip6tables rules of a namespace as
// iptables-save prints them ("-A CHAIN ..."), comments included, which
// nft does not show for rules iptables-nft wrote. Without iptables-save
// installed there are none to list.
func IPTablesRules(ns *netns.NS) ([]string, error) {
	var rules []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		var out, stderr bytes.Buffer
		err = ns.Do(func() error {
			cmd := exec.Command(path)
			cmd.Stdout, cmd.Stderr = &out, &stderr
			return cmd.Run()
		})
		if err != nil {
			return nil, fmt.Errorf("%s in %s: %w: %s", tool, ns.Path(), err, stderr.String())
		}
		for _, line := range strings.Split(out.String(), "\n") {
			if strings.HasPrefix(line, "-A ") {
				rules = append(rules, line)
			}
		}
	}
	return rules, nil
}

// NFT runs the nft tool with args inside a namespace and returns its
// output (observation and test set-up only).
func NFT(ns *netns.NS, args ...string) ([]byte, error) { return nft(ns, args...) }

func nft(ns *netns.NS, args ...string) ([]byte, error) {
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, fmt.Errorf("nft not installed (apt-get install nftables): %w", err)
	}
	var out, stderr bytes.Buffer
	err = ns.Do(func() error {
		cmd := exec.Command(path, args...)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		return cmd.Run()
	})
	if err != nil {
		return nil, fmt.Errorf("nft %s in %s: %w: %s", strings.Join(args, " "), ns.Path(), err, stderr.String())
	}
	return out.Bytes(), nil
}

// Allocation is one IPAM allocation record found in a data directory.
type Allocation struct {
	Path string
	IP   string // the address, when the file is named after it
	Data string // what the record says (container ID, ifname)
}

// Allocations lists the allocation records under an IPAM data directory:
// files named after an IP address, as host-local (reference and podnet)
// writes them, and any other file whose name or content names one of ids
// (such as podnet's per-attachment index).
// Bookkeeping files (locks, last reserved IP) are not allocations.
func Allocations(dataDir string, ids ...string) ([]Allocation, error) {
	var out []Allocation
	err := filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		base := d.Name()
		ip := strings.ReplaceAll(base, "_", ":") // IPv6 files may use _ for :
		if net.ParseIP(ip) != nil {
			out = append(out, Allocation{Path: p, IP: ip, Data: string(data)})
			return nil
		}
		for _, id := range ids {
			if id != "" && (bytes.Contains(data, []byte(id)) || strings.Contains(base, id)) {
				out = append(out, Allocation{Path: p, Data: string(data)})
				return nil
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, err
}

// Listen opens a TCP listener inside a namespace; the socket stays in the
// namespace it was created in.
func Listen(ns *netns.NS, addr string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// Dial connects by TCP from inside a namespace.
func Dial(ns *netns.NS, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// Echo serves one line per connection back to the client until l closes.
func Echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 256)
			n, _ := c.Read(buf)
			_, _ = c.Write(buf[:n])
		}()
	}
}

// RoundTrip dials addr from ns, sends msg and returns what came back.
func RoundTrip(ns *netns.NS, addr, msg string) (string, error) {
	c, err := Dial(ns, addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// NodeState is what a node holds that its pods can leave behind: its
// links other than lo and bridges (veths, ifbs), the number of its
// nftables rules (the reference's iptables rules included where iptables
// is iptables-nft), and the allocation records under a data directory.
type NodeState struct {
	Links   []string // "type name"
	Rules   int
	Records []string // "IPAM <ip>" or the path of another record
}

// TakeNodeState observes a node: its links and rules, and the records
// Allocations finds under dataDir for ids.
func TakeNodeState(ns *netns.NS, dataDir string, ids ...string) (NodeState, error) {
	var st NodeState
	links, err := Links(ns)
	if err != nil {
		return st, err
	}
	for _, l := range links {
		if l.Type != "bridge" && l.Name != "lo" {
			st.Links = append(st.Links, l.Type+" "+l.Name)
		}
	}
	sort.Strings(st.Links)
	rules, err := Rules(ns)
	if err != nil {
		return st, err
	}
	st.Rules = len(rules)
	allocs, err := Allocations(dataDir, ids...)
	if err != nil {
		return st, fmt.Errorf("allocations under %s: %w", dataDir, err)
	}
	for _, a := range allocs {
		if a.IP != "" {
			st.Records = append(st.Records, "IPAM "+a.IP)
		} else {
			st.Records = append(st.Records, a.Path)
		}
	}
	return st, nil
}

// Since describes what st has that before had not.
func (st NodeState) Since(before NodeState) []string {
	var out []string
	had := map[string]bool{}
	for _, x := range append(append([]string{}, before.Links...), before.Records...) {
		had[x] = true
	}
	for _, x := range append(append([]string{}, st.Links...), st.Records...) {
		if !had[x] {
			out = append(out, x)
		}
	}
	if d := st.Rules - before.Rules; d > 0 {
		out = append(out, fmt.Sprintf("%d nftables rules", d))
	}
	return out
}
