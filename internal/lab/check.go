package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/netns"
)

// checkPort is where each pod's built-in server listens during a check.
const checkPort = 7777

// probeTimeout bounds one probe.
const probeTimeout = 3 * time.Second

// Probe is one test of the connectivity matrix.
type Probe struct {
	// From and To are pod names, "outside" for the outside host; To is
	// ToClusterIP or ToNodePort for a probe of the lab's Service.
	From, To string
	Proto    string // icmp or tcp
	// Addr is the destination address; host:port for a Service probe.
	Addr string
	// Seen is the source address the TCP server saw.
	Seen string
	Err  string
}

// OK tells whether the probe succeeded.
func (p Probe) OK() bool { return p.Err == "" }

// Report is the outcome of Check.
type Report struct {
	Pods    []string
	Probes  []Probe // pod to pod
	Outside []Probe // pod to the outside host
	// Services (Kubernetes mode) are the probes of the lab's Service:
	// each pod to its ClusterIP, the outside host to its NodePort on every
	// node's address.
	Services []Probe
	// Allowed, when set, tells which probes a network policy lets through
	// (nil: all): a probe it denies must fail, and its cell shows "deny"
	// ("LEAK" if it got through).
	Allowed func(Probe) bool
}

// allowed tells whether p should get through.
func (r *Report) allowed(p Probe) bool { return r.Allowed == nil || r.Allowed(p) }

// wrong tells whether p's outcome is not the expected one.
func (r *Report) wrong(p Probe) bool { return p.OK() != r.allowed(p) }

// Destinations of the Service probes (Probe.To).
const (
	ToClusterIP = "clusterIP"
	ToNodePort  = "nodePort"
)

// serviceWait bounds the retries of one Service probe: a service proxy
// programs endpoints a moment after the API lists them.
const serviceWait = 15 * time.Second

// Failures counts the probes that failed, or that got through where
// Allowed denies them.
func (r *Report) Failures() int {
	n := 0
	for _, ps := range [][]Probe{r.Probes, r.Outside, r.Services} {
		for _, p := range ps {
			if r.wrong(p) {
				n++
			}
		}
	}
	return n
}

// Check tests every pod against every pod, over ICMP and TCP, on every
// address family the pods have: the TCP server in each pod (built into
// this process, listening inside the pod's namespace) answers with the
// source address it saw, which must be the sender's pod address (no NAT).
// Every pod also reaches the outside host, which must see the pod's node
// address (egress masquerade). The pods are the lab's; in Kubernetes mode
// those of its Deployment (KubePods), and the lab's Service over them is
// probed too (each pod reaches its ClusterIPs, the outside host its
// NodePort at every node address, of each family; any endpoint may
// answer, with any source address).
func (l *Lab) Check(ctx context.Context) (*Report, error) {
	if l.Spec.Kubernetes {
		pods, err := l.KubePods(ctx, PodsNamespace, PodsSelector)
		if err != nil {
			return nil, err
		}
		return l.CheckPods(ctx, pods)
	}
	l.mu.Lock()
	pods := append([]*Pod(nil), l.Pods...)
	l.mu.Unlock()
	return l.CheckPods(ctx, pods)
}

// CheckPods is Check over the given pods (of the lab, or its Kubernetes
// pods from KubePods: in Kubernetes mode they must be the Deployment's,
// which the Service's probes reach).
func (l *Lab) CheckPods(ctx context.Context, pods []*Pod) (*Report, error) {
	return l.checkPods(ctx, pods, l.Spec.Kubernetes)
}

// checkPods is CheckPods, with the probes of the lab's Service or not.
func (l *Lab) checkPods(ctx context.Context, pods []*Pod, services bool) (*Report, error) {
	nodeIP := map[string][]string{}
	for _, n := range l.Nodes {
		nodeIP[n.Name] = []string{n.IP, n.IP6}
	}

	spaces := map[string]*netns.NS{}
	defer func() {
		for _, s := range spaces {
			s.Close()
		}
	}()
	var stops []func()
	defer func() {
		for _, s := range stops {
			s()
		}
	}()
	serve := func(name string, open func() (*netns.NS, error)) error {
		ns, err := open()
		if err != nil {
			return fmt.Errorf("namespace of %s: %w", name, err)
		}
		spaces[name] = ns
		stop, err := serveSource(ns)
		if err != nil {
			return fmt.Errorf("server in %s: %w", name, err)
		}
		stops = append(stops, stop)
		return nil
	}
	for _, p := range pods {
		if err := serve(p.Name, p.openNetNS); err != nil {
			return nil, err
		}
	}
	if err := serve(Outside, func() (*netns.NS, error) { return openNamed(l.nsName(Outside)) }); err != nil {
		return nil, err
	}

	r := &Report{}
	var jobs []*Probe
	for _, src := range pods {
		r.Pods = append(r.Pods, src.Name)
		for _, dst := range pods {
			for _, ip := range dst.IPs {
				for _, proto := range []string{"icmp", "tcp"} {
					r.Probes = append(r.Probes, Probe{From: src.Name, To: dst.Name, Proto: proto, Addr: ip})
				}
			}
		}
		outs := []string{OutsideIP.String()}
		if l.Spec.IPv6 {
			outs = append(outs, OutsideIP6.String())
		}
		for _, ip := range outs {
			r.Outside = append(r.Outside, Probe{From: src.Name, To: Outside, Proto: "tcp", Addr: ip})
		}
	}
	if services {
		var err error
		if r.Services, err = l.serviceProbes(ctx, pods); err != nil {
			return nil, err
		}
	}
	for _, ps := range [][]Probe{r.Probes, r.Outside, r.Services} {
		for i := range ps {
			jobs = append(jobs, &ps[i])
		}
	}
	podByName := map[string]*Pod{}
	for _, p := range pods {
		podByName[p.Name] = p
	}
	work := make(chan *Probe)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pr := range work {
				src := podByName[pr.From]
				ns := spaces[pr.From]
				dst := net.ParseIP(pr.Addr)
				var err error
				switch {
				case pr.To == ToClusterIP || pr.To == ToNodePort:
					pr.Seen, err = askService(ctx, ns, pr.Addr)
				case pr.Proto == "icmp":
					err = ping(ns, dst, probeTimeout)
				case pr.Proto == "tcp":
					pr.Seen, err = askSource(ctx, ns, net.JoinHostPort(dst.String(), fmt.Sprint(checkPort)))
					if err == nil {
						want := sameFamily(dst, src.IPs)
						if pr.To == Outside {
							want = sameFamily(dst, nodeIP[src.Node])
						}
						if pr.Seen != want {
							err = fmt.Errorf("server saw %s, want %s", pr.Seen, want)
						}
					}
				}
				if err != nil {
					pr.Err = err.Error()
				}
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	return r, nil
}

// serviceProbes are the probes of the lab's Service: each pod to its
// ClusterIPs, the outside host to its NodePort at each node address.
func (l *Lab) serviceProbes(ctx context.Context, pods []*Pod) ([]Probe, error) {
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	svc, err := c.CoreV1().Services(PodsNamespace).Get(ctx, PodsService, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("the lab's Service: %w", err)
	}
	var ps []Probe
	for _, p := range pods {
		for _, ip := range clusterIPs(svc) {
			ps = append(ps, Probe{From: p.Name, To: ToClusterIP, Proto: "tcp", Addr: net.JoinHostPort(ip, fmt.Sprint(PodsServicePort))})
		}
	}
	for _, n := range l.Nodes {
		for _, ip := range []string{n.IP, n.IP6} {
			if ip != "" {
				ps = append(ps, Probe{From: Outside, To: ToNodePort, Proto: "tcp", Addr: net.JoinHostPort(ip, fmt.Sprint(PodsNodePort))})
			}
		}
	}
	return ps, nil
}

// askService is askSource to a Service's address, tried again until it
// answers or serviceWait passes.
func askService(ctx context.Context, ns *netns.NS, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, serviceWait)
	defer cancel()
	for {
		seen, err := askSource(ctx, ns, addr)
		if err == nil {
			return seen, nil
		}
		select {
		case <-ctx.Done():
			return "", err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// sameFamily picks the address of ip's family from a list.
func sameFamily(ip net.IP, list []string) string {
	for _, s := range list {
		a := net.ParseIP(s)
		if a != nil && (a.To4() != nil) == (ip.To4() != nil) {
			return a.String()
		}
	}
	return ""
}

// serveSource listens on checkPort inside ns and answers every connection
// with the source address it came from.
func serveSource(ns *netns.NS) (func(), error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", checkPort))
		return err
	})
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintln(c, net.ParseIP(host).String())
			c.Close()
		}
	}()
	return func() { ln.Close() }, nil
}

// askSource connects from ns to the server at addr (host:port) and
// returns the source address the server saw.
func askSource(ctx context.Context, ns *netns.NS, addr string) (string, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		d := net.Dialer{Timeout: probeTimeout}
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(probeTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read answer: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// ping sends one ICMP echo request from ns to dst and waits for its reply.
func ping(ns *netns.NS, dst net.IP, timeout time.Duration) error {
	network, laddr, proto := "ip4:icmp", "0.0.0.0", 1
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if dst.To4() == nil {
		network, laddr, proto, typ = "ip6:ipv6-icmp", "::", 58, ipv6.ICMPTypeEchoRequest
	}
	var c *icmp.PacketConn
	if err := ns.Do(func() error {
		var err error
		c, err = icmp.ListenPacket(network, laddr)
		return err
	}); err != nil {
		return fmt.Errorf("icmp socket: %w", err)
	}
	defer c.Close()
	var b [2]byte
	_, _ = rand.Read(b[:])
	id := int(binary.BigEndian.Uint16(b[:]))
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("podnet-lab")}}
	wire, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(wire, &net.IPAddr{IP: dst}); err != nil {
		return fmt.Errorf("send echo: %w", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return errors.New("no echo reply")
			}
			return err
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && (m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply) {
			if a, ok := peer.(*net.IPAddr); ok && a.IP.Equal(dst) {
				return nil
			}
		}
	}
}

// Print writes the matrix (one cell per pod pair: every family and both
// protocols), the outside column, in Kubernetes mode the Service's
// columns (each pod to the ClusterIP, of every family the Service has;
// the outside host's row to the NodePort at every node address), the
// failures and a summary line.
func (r *Report) Print(w io.Writer) {
	type key struct{ from, to string }
	cell := map[key][]Probe{}
	for _, p := range r.Probes {
		cell[key{p.From, p.To}] = append(cell[key{p.From, p.To}], p)
	}
	outside := map[string][]Probe{}
	for _, p := range r.Outside {
		outside[p.From] = append(outside[p.From], p)
	}
	service := map[key][]Probe{}
	for _, p := range r.Services {
		service[key{p.From, p.To}] = append(service[key{p.From, p.To}], p)
	}
	var svcCols []string
	if len(r.Services) > 0 {
		svcCols = []string{ToClusterIP, ToNodePort}
	}
	// Names sharing a prefix (a Deployment's pods) are shown without it.
	prefix := commonPrefix(r.Pods)
	if prefix != "" {
		fmt.Fprintf(w, "pods %s…\n", prefix)
	}
	label := func(p string) string { return strings.TrimPrefix(p, prefix) }
	width := len(Outside)
	for _, p := range r.Pods {
		width = max(width, len(label(p)))
	}
	for _, c := range svcCols {
		width = max(width, len(c))
	}
	row := func(from string, cells []string) {
		line := fmt.Sprintf("%-*s", width+2, label(from))
		for _, c := range cells {
			line += fmt.Sprintf(" %-*s", width, c)
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	var head []string
	for _, p := range r.Pods {
		head = append(head, label(p))
	}
	row("from\\to", append(append(head, Outside), svcCols...))
	mark := func(ps []Probe) string {
		if len(ps) == 0 {
			return "-"
		}
		denied := !r.allowed(ps[0]) // a policy allows or denies a pair
		for _, p := range ps {
			switch {
			case denied && p.OK():
				return "LEAK"
			case !denied && !p.OK():
				return "FAIL"
			}
		}
		if denied {
			return "deny"
		}
		return "ok"
	}
	for _, from := range r.Pods {
		var cells []string
		for _, to := range r.Pods {
			cells = append(cells, mark(cell[key{from, to}]))
		}
		cells = append(cells, mark(outside[from]))
		for _, c := range svcCols {
			cells = append(cells, mark(service[key{from, c}]))
		}
		row(from, cells)
	}
	if len(svcCols) > 0 {
		// The outside host reaches no pod (no route to the pod network),
		// only the Service's NodePort.
		cells := make([]string, len(r.Pods)+1)
		for i := range cells {
			cells[i] = "-"
		}
		for _, c := range svcCols {
			cells = append(cells, mark(service[key{Outside, c}]))
		}
		row(Outside, cells)
	}
	for _, ps := range [][]Probe{r.Probes, r.Outside, r.Services} {
		for _, p := range ps {
			switch {
			case r.wrong(p) && p.OK():
				fmt.Fprintf(w, "  LEAK %s → %s %s %s: got through, the policy denies it\n", p.From, p.To, p.Proto, p.Addr)
			case r.wrong(p):
				fmt.Fprintf(w, "  FAIL %s → %s %s %s: %s\n", p.From, p.To, p.Proto, p.Addr, p.Err)
			}
		}
	}
	pairs, okPairs, deniedPairs := 0, 0, 0
	for _, ps := range cell {
		pairs++
		switch mark(ps) {
		case "ok":
			okPairs++
		case "deny":
			deniedPairs++
		}
	}
	outOK := 0
	for _, ps := range outside {
		if mark(ps) == "ok" {
			outOK++
		}
	}
	fmt.Fprintf(w, "%d/%d pod pairs reach each other over ICMP and TCP (%d probes; a pair is ok only if every receiver saw the sender's pod IP: no NAT)",
		okPairs, pairs, len(r.Probes))
	if r.Allowed != nil {
		fmt.Fprintf(w, ", %d/%d denied by policy as it should be", deniedPairs, pairs)
	}
	fmt.Fprintf(w, "; %d/%d pods reach the outside masqueraded as their node", outOK, len(outside))
	if len(r.Services) > 0 {
		// A pod reaches the ClusterIP when it does on every family; the
		// NodePort counts per node address.
		podsOK, nodePortOK, nodePorts := 0, 0, 0
		for _, from := range r.Pods {
			if mark(service[key{from, ToClusterIP}]) == "ok" {
				podsOK++
			}
		}
		for _, p := range service[key{Outside, ToNodePort}] {
			nodePorts++
			if p.OK() {
				nodePortOK++
			}
		}
		fmt.Fprintf(w, "; %d/%d pods reach the Service's ClusterIP; the outside reaches its NodePort at %d/%d node addresses",
			podsOK, len(r.Pods), nodePortOK, nodePorts)
	}
	fmt.Fprintf(w, "; %d failures\n", r.Failures())
}

// commonPrefix is the longest prefix, ending in '/' or '-', that all of
// several Kubernetes pod names (namespace/name) share.
func commonPrefix(names []string) string {
	if len(names) < 2 {
		return ""
	}
	p := names[0]
	for _, n := range names[1:] {
		for !strings.HasPrefix(n, p) {
			p = p[:len(p)-1]
		}
	}
	if !strings.Contains(p, "/") {
		return ""
	}
	return p[:strings.LastIndexAny(p, "/-")+1]
}

// Ping sends one ICMP echo from the pod to dst and waits for the reply.
func (l *Lab) Ping(from string, dst net.IP, timeout time.Duration) error {
	p, err := l.pod(from)
	if err != nil {
		return err
	}
	ns, err := netns.OpenNamed(p.NS)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ping(ns.NS, dst, timeout)
}
