package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
)

// side is one side of the comparison and what it measured.
type side struct {
	Name   string   `json:"name"`
	Node   string   `json:"node"`
	CNI    string   `json:"cni"`
	Rounds []*round `json:"rounds"`
	// Phases are the medians, over every pod of the side, of the phases
	// of its start (phaseNames), from containerd's log and the watch.
	Phases []phase `json:"phases"`
	// Metrics are the node's histograms over all rounds.
	Metrics map[string]histo `json:"metrics"`
	// Example is the pod of median start time, moment by moment.
	Example *example `json:"example,omitempty"`
}

// example is one pod's start: the moments of momentNames, as offsets
// from its creation.
type example struct {
	Pod     string          `json:"pod"`
	Offsets []time.Duration `json:"offsets"`
}

// momentNames name the moments of a pod's start (podEvents.moments).
var momentNames = []string{
	"created (watch)", "RunPodSandbox called", "RunPodSandbox returned", "CreateContainer called",
	"CreateContainer returned", "StartContainer called", "StartContainer returned", "Running (watch)",
}

// exampleOf is the pod of median start time among those found in events.
func exampleOf(pods []*podTimes, events map[string]*podEvents) *example {
	var found []*example
	for _, pm := range momentsOf(pods, events) {
		ms := pm.moments
		x := &example{Pod: pm.pod.Name}
		for _, m := range ms {
			x.Offsets = append(x.Offsets, m.Sub(ms[0]))
		}
		found = append(found, x)
	}
	if len(found) == 0 {
		return nil
	}
	sort.Slice(found, func(i, j int) bool { return found[i].total() < found[j].total() })
	return found[(len(found)-1)/2]
}

func (x *example) total() time.Duration { return x.Offsets[len(x.Offsets)-1] }

// phase is the median and 90th percentile of one phase of the pods'
// starts.
type phase struct {
	What string        `json:"what"`
	P50  time.Duration `json:"p50"`
	P90  time.Duration `json:"p90"`
	Pods int           `json:"pods"`
}

// phaseNames are the phases of a pod's start, in order: consecutive
// moments of podEvents.
var phaseNames = []string{
	"created → RunPodSandbox called (scheduling, kubelet admission, volumes)",
	"RunPodSandbox (netns, CNI ADD, pause container)",
	"sandbox ready → CreateContainer called",
	"CreateContainer",
	"StartContainer",
	"container started → Running in the API (PLEG, status update)",
}

// podEvents are the moments of one pod's start, from containerd's log.
type podEvents struct {
	sandboxCalled, sandboxDone time.Time
	sandboxID                  string
	createCalled, createDone   time.Time
	containerID                string
	startCalled, startDone     time.Time
}

// containerd's CRI log lines of a pod's start (quotes unescaped).
var (
	logTime       = regexp.MustCompile(`^time="([^"]+)"`)
	sandboxCalled = regexp.MustCompile(`msg="RunPodSandbox for &PodSandboxMetadata\{Name:([^,]+),[^}]*\}"$`)
	sandboxDone   = regexp.MustCompile(`msg="RunPodSandbox for &PodSandboxMetadata\{Name:([^,]+),[^}]*\} returns sandbox id "([0-9a-f]+)""`)
	createCalled  = regexp.MustCompile(`msg="CreateContainer within sandbox "([0-9a-f]+)" for container &ContainerMetadata`)
	createDone    = regexp.MustCompile(`msg="CreateContainer within sandbox "([0-9a-f]+)" for &ContainerMetadata\{[^}]*\} returns container id "([0-9a-f]+)""`)
	startCalled   = regexp.MustCompile(`msg="StartContainer for "([0-9a-f]+)""$`)
	startDone     = regexp.MustCompile(`msg="StartContainer for "([0-9a-f]+)" returns successfully"`)
)

// parseContainerdLog reads the start of every pod in containerd's log,
// by pod name.
func parseContainerdLog(r io.Reader) (map[string]*podEvents, error) {
	pods := map[string]*podEvents{}
	bySandbox := map[string]*podEvents{}
	byContainer := map[string]*podEvents{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.ReplaceAll(strings.TrimSpace(sc.Text()), `\"`, `"`)
		tm := logTime.FindStringSubmatch(line)
		if tm == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, tm[1])
		if err != nil {
			continue
		}
		if m := sandboxDone.FindStringSubmatch(line); m != nil {
			if p := pods[m[1]]; p != nil {
				p.sandboxDone, p.sandboxID = at, m[2]
				bySandbox[m[2]] = p
			}
		} else if m := sandboxCalled.FindStringSubmatch(line); m != nil {
			pods[m[1]] = &podEvents{sandboxCalled: at}
		} else if m := createDone.FindStringSubmatch(line); m != nil {
			if p := bySandbox[m[1]]; p != nil {
				p.createDone, p.containerID = at, m[2]
				byContainer[m[2]] = p
			}
		} else if m := createCalled.FindStringSubmatch(line); m != nil {
			if p := bySandbox[m[1]]; p != nil && p.createCalled.IsZero() {
				p.createCalled = at
			}
		} else if m := startDone.FindStringSubmatch(line); m != nil {
			if p := byContainer[m[1]]; p != nil {
				p.startDone = at
			}
		} else if m := startCalled.FindStringSubmatch(line); m != nil {
			if p := byContainer[m[1]]; p != nil {
				p.startCalled = at
			}
		}
	}
	return pods, sc.Err()
}

// moments are a started pod's consecutive moments, or nil when
// containerd's log lacks one.
func (e *podEvents) moments(p *podTimes) []time.Time {
	ms := []time.Time{p.Created, e.sandboxCalled, e.sandboxDone, e.createCalled, e.createDone, e.startCalled, e.startDone, p.Running}
	for _, m := range ms {
		if m.IsZero() {
			return nil
		}
	}
	return ms
}

// podMoments is a started pod with its consecutive moments.
type podMoments struct {
	pod     *podTimes
	moments []time.Time
}

// momentsOf is, in order, the pods found in events whose moments are all
// known.
func momentsOf(pods []*podTimes, events map[string]*podEvents) []podMoments {
	var out []podMoments
	for _, p := range pods {
		if e := events[p.Name]; e != nil {
			if ms := e.moments(p); ms != nil {
				out = append(out, podMoments{p, ms})
			}
		}
	}
	return out
}

// phasesOf is the medians and 90th percentiles of the phases over the
// pods found in events.
func phasesOf(pods []*podTimes, events map[string]*podEvents) []phase {
	durs := make([][]time.Duration, len(phaseNames)+1)
	for _, pm := range momentsOf(pods, events) {
		ms := pm.moments
		// Moments 4 and 5 (CreateContainer returned, StartContainer
		// called) are kubelet's back-to-back calls: their gap goes
		// with StartContainer.
		bounds := [][2]int{{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 6}, {6, 7}}
		for i, b := range bounds {
			durs[i] = append(durs[i], ms[b[1]].Sub(ms[b[0]]))
		}
		durs[len(phaseNames)] = append(durs[len(phaseNames)], ms[7].Sub(ms[0]))
	}
	var out []phase
	for i, ds := range durs {
		what := "total: created → Running"
		if i < len(phaseNames) {
			what = phaseNames[i]
		}
		out = append(out, phase{What: what, P50: benchdoc.Percentile(ds, .5), P90: benchdoc.Percentile(ds, .9), Pods: len(ds)})
	}
	return out
}

// breakdown fills the side's phases from its node's containerd log and
// its metrics from its rounds'.
func (b *bench) breakdown(_ context.Context, s *side) error {
	kn, err := b.l.KubeNode(s.Node)
	if err != nil {
		return err
	}
	f, err := os.Open(kn.LogPath("containerd"))
	if err != nil {
		return err
	}
	defer f.Close()
	events, err := parseContainerdLog(f)
	if err != nil {
		return fmt.Errorf("containerd log of %s: %w", s.Node, err)
	}
	var pods []*podTimes
	s.Metrics = map[string]histo{}
	for _, r := range s.Rounds {
		pods = append(pods, r.Pods...)
		for id, h := range r.Metrics {
			t := s.Metrics[id]
			s.Metrics[id] = histo{Count: t.Count + h.Count, Sum: t.Sum + h.Sum}
		}
	}
	s.Phases = phasesOf(pods, events)
	s.Example = exampleOf(pods, events)
	return nil
}
