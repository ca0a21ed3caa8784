package chaos

import (
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/testing/sandbox"
)

// maxNotes bounds the failures and findings a report spells out.
const maxNotes = 20

// Report is what one chaos run did and what the audit found. The counts
// of the audit are all zero on a node that recovered fully.
type Report struct {
	Chain      string  `json:"chain"`
	CNIVersion string  `json:"cniVersion"`
	Ops        int     `json:"ops"`
	InFlight   int     `json:"inFlight"`
	KillShare  float64 `json:"killShare"`
	Seed       uint64  `json:"seed"`

	// What ran: ADDs and DELs started, operations SIGKILLed (of them
	// ADDs), kills due after the operation had ended, and operations
	// that failed without being killed.
	Adds        int      `json:"adds"`
	Dels        int      `json:"dels"`
	Killed      int      `json:"killed"`
	KilledAdds  int      `json:"killedAdds"`
	KillsMissed int      `json:"killsMissed"`
	Failed      int      `json:"failed"`
	Failures    []string `json:"failures,omitempty"`

	// The journal at the end: pods created, valid, deleted, and left
	// invalid for GC (for Lost of them no DEL was to come, the runtime
	// having lost track; the others were waiting for one; libcni's cache
	// knew StaleCached of them: its GC DELs those first, the others only
	// the plugins' GC can find).
	Pods        int    `json:"pods"`
	Valid       int    `json:"valid"`
	Deleted     int    `json:"deleted"`
	Invalid     int    `json:"invalid"`
	Lost        int    `json:"lost"`
	StaleCached int    `json:"staleCached"`
	GCError     string `json:"gcError,omitempty"`

	// The audit after GC. DupIPs: addresses held by more than one valid
	// pod; LeakedIPs: allocations whose owner is not a valid pod;
	// MissingIPs: valid pods' addresses without their allocation;
	// LeakedLinks: host links (veths, ifbs, …) of no valid pod;
	// LeakedRules: nftables rules naming a pod that is not valid;
	// LeakedFiles: other state files naming such a pod; BrokenPods:
	// valid pods without their interface, an address, their host veth,
	// their ifb or their rules.
	DupIPs      int      `json:"duplicateIPs"`
	LeakedIPs   int      `json:"leakedIPs"`
	MissingIPs  int      `json:"missingIPs"`
	LeakedLinks int      `json:"leakedLinks"`
	LeakedRules int      `json:"leakedRules"`
	LeakedFiles int      `json:"leakedFiles"`
	BrokenPods  int      `json:"brokenPods"`
	Findings    []string `json:"findings,omitempty"`

	// The teardown: every valid pod deleted, then GC with none valid;
	// what the node has that it had not before the run.
	TeardownFailed int      `json:"teardownFailed"`
	LeftOver       []string `json:"leftOver,omitempty"`

	OpsTook time.Duration `json:"opsTookNs"`
	Took    time.Duration `json:"tookNs"`
}

// Clean tells whether the node recovered fully: no failure, no duplicate,
// nothing leaked, every valid pod intact, nothing left after teardown.
func (r *Report) Clean() bool {
	return r.Failed == 0 && r.GCError == "" && r.DupIPs == 0 && r.LeakedIPs == 0 && r.MissingIPs == 0 &&
		r.LeakedLinks == 0 && r.LeakedRules == 0 && r.LeakedFiles == 0 && r.BrokenPods == 0 &&
		r.TeardownFailed == 0 && len(r.LeftOver) == 0
}

// Summary is the report in a few lines.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (cniVersion %s): %d operations (%d ADD, %d DEL), %d in flight, seed %d, took %s\n",
		r.Chain, r.CNIVersion, r.Ops, r.Adds, r.Dels, r.InFlight, r.Seed, r.Took.Round(time.Second))
	fmt.Fprintf(&b, "  killed %d (%d ADD, %d DEL), kill due after the end %d, failed unkilled %d\n",
		r.Killed, r.KilledAdds, r.Killed-r.KilledAdds, r.KillsMissed, r.Failed)
	fmt.Fprintf(&b, "  pods %d: valid %d, deleted %d, invalid %d (%d lost by the runtime, %d in libcni's cache)\n",
		r.Pods, r.Valid, r.Deleted, r.Invalid, r.Lost, r.StaleCached)
	fmt.Fprintf(&b, "  after GC: duplicate IPs %d, leaked IPs %d, missing IPs %d, leaked links %d, leaked rules %d, leaked files %d, broken valid pods %d\n",
		r.DupIPs, r.LeakedIPs, r.MissingIPs, r.LeakedLinks, r.LeakedRules, r.LeakedFiles, r.BrokenPods)
	left := "nothing"
	if len(r.LeftOver) > 0 {
		left = strings.Join(r.LeftOver, ", ")
	}
	fmt.Fprintf(&b, "  after teardown: %d DEL failures, left: %s\n", r.TeardownFailed, left)
	if r.GCError != "" {
		fmt.Fprintf(&b, "  GC failed: %s\n", r.GCError)
	}
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "  failure: %s\n", f)
	}
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "  finding: %s\n", f)
	}
	return b.String()
}

func (r *Report) fail(msg string) {
	r.Failed++
	if len(r.Failures) < maxNotes {
		r.Failures = append(r.Failures, msg)
	}
}

func (r *Report) find(count *int, format string, args ...any) {
	*count++
	if len(r.Findings) < maxNotes {
		r.Findings = append(r.Findings, fmt.Sprintf(format, args...))
	}
}

// cnitoolID matches the container IDs cnitool gives attachments, in rule
// comments (podnet's identity, the reference's "id: …") and state files.
var cnitoolID = regexp.MustCompile(`cnitool-[0-9a-f]{20}`)

// nodeState observes the node: links, rules, and every state file that
// names an attachment.
func (d *driver) nodeState() (sandbox.NodeState, error) {
	return sandbox.TakeNodeState(d.sb.Host.NS, d.dataDir, "cnitool-")
}

// validAttachments are the valid pods' attachments, as a runtime's GC
// passes them.
func (d *driver) validAttachments() []types.GCAttachment {
	out := []types.GCAttachment{}
	for _, p := range d.pods {
		if p.state == valid {
			out = append(out, types.GCAttachment{ContainerID: p.id, IfName: "eth0"})
		}
	}
	return out
}

// gc runs libcni's GC of the network with the valid attachments from the
// cnitool runner (so it reads cnitool's cache): libcni DELs the cached
// attachments that are not valid, then, from spec 1.1.0, sends GC to every
// plugin. It returns how many cached attachments were stale.
func (d *driver) gc(ctx context.Context, valid []types.GCAttachment) (stale int, gcErr, err error) {
	list, err := libcni.LoadConfList(d.netDir, d.name)
	if err != nil {
		return 0, nil, fmt.Errorf("load conflist %s: %w", d.name, err)
	}
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: io.Discard}, PluginDecoder: version.PluginDecoder{}}
	cni := libcni.NewCNIConfigWithCacheDir([]string{d.cfg.BinDir}, "", exec)
	keep := map[types.GCAttachment]bool{}
	for _, a := range valid {
		keep[a] = true
	}
	err = d.cfg.Runner.Do(d.sb.Host.NS, func() error {
		cached, err := cni.GetCachedAttachments("")
		if err != nil {
			return fmt.Errorf("libcni's cached attachments: %w", err)
		}
		for _, a := range cached {
			if a.Network == d.name && !keep[types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}] {
				stale++
			}
		}
		gcErr = cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid})
		return nil
	})
	return stale, gcErr, err
}

// recover is the runtime coming back: the journal's valid pods are kept,
// every other attachment is garbage-collected.
func (d *driver) recover(ctx context.Context, rep *Report) error {
	for _, p := range d.pods[1:] { // the first is the warm-up's
		rep.Pods++
		switch p.state {
		case valid:
			rep.Valid++
		case deleted:
			rep.Deleted++
		default:
			rep.Invalid++
			if p.lost {
				rep.Lost++
			}
		}
	}
	stale, gcErr, err := d.gc(ctx, d.validAttachments())
	if err != nil {
		return fmt.Errorf("GC: %w", err)
	}
	rep.StaleCached = stale
	if gcErr != nil {
		rep.GCError = gcErr.Error()
	}
	return nil
}

// audit checks the node after GC against the journal.
func (d *driver) audit(rep *Report) error {
	byID := map[string]*pod{}
	for _, p := range d.pods {
		if p.state == valid {
			byID[p.id] = p
		}
	}

	// Duplicates among the valid pods' results.
	holder := map[string]string{}
	for _, p := range d.pods {
		if p.state != valid {
			continue
		}
		for _, ip := range p.ips {
			if other, ok := holder[ip.IP.String()]; ok {
				rep.find(&rep.DupIPs, "%s given to both %s and %s", ip.IP, other, p.id)
			}
			holder[ip.IP.String()] = p.id
		}
	}

	if err := d.auditLinks(rep, byID); err != nil {
		return err
	}
	if err := d.auditRules(rep, byID); err != nil {
		return err
	}
	return d.auditFiles(rep, byID)
}

// auditLinks checks that every valid pod has its interface with its
// addresses, its host veth and the ifb its veth redirects to, and that
// the node has no other link (but lo and bridges).
func (d *driver) auditLinks(rep *Report, byID map[string]*pod) error {
	h, err := netlink.NewHandleAt(d.sb.Host.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in the node: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list the node's links: %w", err)
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	owned := map[int]bool{} // host links of valid pods
	for _, p := range byID {
		broken := func(format string, args ...any) {
			rep.find(&rep.BrokenPods, "valid pod %s: "+format, append([]any{p.id}, args...)...)
		}
		podLinks, err := sandbox.Links(p.sp.NS.NS)
		if err != nil {
			return err
		}
		eth0, ok := sandbox.FindLink(podLinks, "eth0")
		if !ok {
			broken("no eth0")
			continue
		}
		if missing := missingAddrs(eth0, p.ips); len(missing) > 0 {
			broken("eth0 lacks %v", missing)
			continue
		}
		veth, ok := byIndex[eth0.ParentIndex]
		if !ok || veth.Type() != "veth" {
			broken("its host veth (index %d) is gone", eth0.ParentIndex)
			continue
		}
		owned[eth0.ParentIndex] = true
		filters, err := h.FilterList(veth, netlink.MakeHandle(0xffff, 0))
		if err != nil {
			return fmt.Errorf("ingress filters of %s: %w", veth.Attrs().Name, err)
		}
		ifb := 0
		for _, f := range filters {
			if u, ok := f.(*netlink.U32); ok && u.RedirIndex > 0 {
				ifb = u.RedirIndex
			}
		}
		if l, ok := byIndex[ifb]; !ok || l.Type() != "ifb" {
			broken("its veth %s redirects to no ifb", veth.Attrs().Name)
			continue
		}
		owned[ifb] = true
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Name == "lo" || l.Type() == "bridge" || owned[a.Index] {
			continue
		}
		rep.find(&rep.LeakedLinks, "link %s %s (alias %q) belongs to no valid pod%s", l.Type(), a.Name, a.Alias, d.whose(a.Alias))
	}
	return nil
}

// whose describes the journal of the pod whose container ID s contains.
func (d *driver) whose(s string) string {
	id := cnitoolID.FindString(s)
	for _, p := range d.pods {
		if p.id == id {
			return fmt.Sprintf(" (its pod: %s)", strings.Join(p.history, ", "))
		}
	}
	return ""
}

// missingAddrs are the addresses of want the link does not carry.
func missingAddrs(l sandbox.Link, want []net.IPNet) []string {
	var out []string
	for _, a := range want {
		if !l.HasAddr(a) {
			out = append(out, a.String())
		}
	}
	return out
}

// auditRules checks the node's rules that name an attachment (podnet's
// nftables rules carry its identity as their comment, the reference's
// iptables rules cnitool's container ID in theirs): each must name a
// valid pod, and every valid pod must have some (its host ports).
func (d *driver) auditRules(rep *Report, byID map[string]*pod) error {
	nft, err := sandbox.Rules(d.sb.Host.NS)
	if err != nil {
		return err
	}
	rules, err := sandbox.IPTablesRules(d.sb.Host.NS)
	if err != nil {
		return err
	}
	for _, r := range nft {
		if r.Comment != "" {
			rules = append(rules, r.String())
		}
	}
	hasRules := map[string]bool{}
	for _, r := range rules {
		for _, id := range cnitoolID.FindAllString(r, -1) {
			if byID[id] == nil {
				rep.find(&rep.LeakedRules, "rule %s names %s, not a valid pod%s", r, id, d.whose(id))
				break
			}
			hasRules[id] = true
		}
	}
	for id := range byID {
		if !hasRules[id] {
			rep.find(&rep.BrokenPods, "valid pod %s: no rule names it", id)
		}
	}
	return nil
}

// auditFiles checks the state under the plugins' data directory: each
// address allocation belongs to a valid pod, every valid pod holds its
// addresses, and no other file names a pod that is not valid.
func (d *driver) auditFiles(rep *Report, byID map[string]*pod) error {
	recs, err := sandbox.Allocations(d.dataDir, "cnitool-")
	if err != nil {
		return fmt.Errorf("state files: %w", err)
	}
	owner := map[string]string{} // address → container ID of its file
	for _, a := range recs {
		if a.IP == "" {
			if id := cnitoolID.FindString(a.Path + "\n" + a.Data); byID[id] == nil {
				rep.find(&rep.LeakedFiles, "%s names %s, not a valid pod%s", a.Path, id, d.whose(id))
			}
			continue
		}
		id, _, _ := strings.Cut(strings.TrimSpace(a.Data), "\n")
		id = strings.TrimSpace(id)
		owner[net.ParseIP(a.IP).String()] = id
		if byID[id] == nil {
			rep.find(&rep.LeakedIPs, "%s is allocated to %q, not a valid pod%s", a.IP, id, d.whose(id))
		}
	}
	for _, p := range byID {
		for _, ip := range p.ips {
			if owner[ip.IP.String()] != p.id {
				rep.find(&rep.MissingIPs, "valid pod %s: %s is not allocated to it", p.id, ip.IP)
			}
		}
	}
	return nil
}

// teardown deletes every valid pod (no kills), collects garbage with no
// attachment valid, and reports what the node has that it had not after
// the warm-up.
func (d *driver) teardown(ctx context.Context, rep *Report) error {
	sem := make(chan struct{}, d.cfg.InFlight)
	var wg sync.WaitGroup
	var mu sync.Mutex // guards rep
	for _, p := range d.pods {
		if p.state != valid {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if o := d.cnitool(ctx, "del", p, -1); o.err != nil {
				mu.Lock()
				rep.find(&rep.TeardownFailed, "teardown DEL %s: %v", p.id, o.err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	_, gcErr, err := d.gc(ctx, []types.GCAttachment{})
	if err != nil {
		return fmt.Errorf("teardown GC: %w", err)
	}
	if gcErr != nil && rep.GCError == "" {
		rep.GCError = "teardown: " + gcErr.Error()
	}
	after, err := d.nodeState()
	if err != nil {
		return fmt.Errorf("node after teardown: %w", err)
	}
	rep.LeftOver = after.Since(d.baseline)
	return nil
}
