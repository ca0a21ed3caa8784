package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"golang.org/x/sync/errgroup"

	"github.com/podnet/podnet/bench/internal/benchdoc"
	"github.com/podnet/podnet/internal/kube"
)

// The rounds' Deployments: in the default namespace, labelled with the
// benchmark's name and the round's.
const (
	podsNamespace = metav1.NamespaceDefault
	appLabel      = "app.kubernetes.io/name"
	appName       = "podstart"
	roundLabel    = "bench.podnet.dev/round"
)

// podTimes is one pod's life as the benchmark's watch saw it, on the
// machine's clock (the API's own timestamps have second precision).
type podTimes struct {
	Name string `json:"name"`
	// Created is when the watch first saw the pod, Scheduled when it
	// first saw it bound to a node, Running when it first saw its phase
	// Running, Ready its Ready condition True.
	Created   time.Time `json:"created"`
	Scheduled time.Time `json:"scheduled,omitzero"`
	Running   time.Time `json:"running,omitzero"`
	Ready     time.Time `json:"ready,omitzero"`
	// Deleting is when the watch first saw its deletionTimestamp, Gone
	// its removal.
	Deleting time.Time `json:"deleting,omitzero"`
	Gone     time.Time `json:"gone,omitzero"`
	// The API's timestamps, for reference.
	CreationTimestamp time.Time `json:"creationTimestamp"`
	ContainerStarted  time.Time `json:"containerStartedAt,omitzero"`
}

// startTime is create → Running.
func (p *podTimes) startTime() time.Duration { return p.Running.Sub(p.Created) }

// deleteTime is deletion → removal.
func (p *podTimes) deleteTime() time.Duration { return p.Gone.Sub(p.Deleting) }

// round is one Deployment's pods on one side.
type round struct {
	Deployment string `json:"deployment"`
	// Created is the Deployment's creation (the call), AllRunning the
	// last pod's Running; DeleteCalled the Deployment's deletion,
	// AllGone the last pod's removal.
	Created      time.Time   `json:"created"`
	AllRunning   time.Time   `json:"allRunning"`
	DeleteCalled time.Time   `json:"deleteCalled"`
	AllGone      time.Time   `json:"allGone"`
	Pods         []*podTimes `json:"pods"`
	// Load is the machine's load average when the round began.
	Load string `json:"loadAverage"`
	// Metrics are the node's kubelet and containerd histograms over the
	// round (created to gone).
	Metrics map[string]histo `json:"metrics"`
}

func (r *round) startTimes() []time.Duration {
	var ds []time.Duration
	for _, p := range r.Pods {
		ds = append(ds, p.startTime())
	}
	return ds
}

func (r *round) deleteTimes() []time.Duration {
	var ds []time.Duration
	for _, p := range r.Pods {
		ds = append(ds, p.deleteTime())
	}
	return ds
}

// summary is the round's line of progress.
func (r *round) summary(s *side) string {
	st, dt := r.startTimes(), r.deleteTimes()
	return fmt.Sprintf("%-9s %-22s on %s, load %5s: create → Running median %s, p90 %s, all %d in %s; delete median %s, all gone in %s",
		s.Name, r.Deployment, s.Node, r.Load, secs(benchdoc.Percentile(st, .5)), secs(benchdoc.Percentile(st, .9)), len(r.Pods),
		secs(r.AllRunning.Sub(r.Created)), secs(benchdoc.Percentile(dt, .5)), secs(r.AllGone.Sub(r.DeleteCalled)))
}

// rounds runs round i of every side, one after the other or, together,
// all at once.
func (b *bench) rounds(ctx context.Context, sides []*side, i int, together bool) error {
	run := func(ctx context.Context, s *side) error {
		r, err := b.round(ctx, s, fmt.Sprintf("podstart-%s-%d", s.Name, i+1), b.o.pods)
		if err != nil {
			return err
		}
		s.Rounds = append(s.Rounds, r)
		fmt.Fprintln(os.Stderr, r.summary(s))
		return nil
	}
	if !together {
		for _, s := range sides {
			if err := run(ctx, s); err != nil {
				return err
			}
		}
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range sides {
		g.Go(func() error { return run(gctx, s) })
	}
	return g.Wait()
}

// round runs a round of side s, n pods of a Deployment called name: the
// Deployment created, its pods timed to Running, the Deployment deleted
// and its pods timed to their removal, the node's metrics taken around
// it all.
func (b *bench) round(ctx context.Context, s *side, name string, n int) (*round, error) {
	r := &round{Deployment: name, Load: benchdoc.LoadAverage()}
	before, err := b.scrape(ctx, s.Node)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := watchPods(ctx, b, roundLabel+"="+r.Deployment)
	if err != nil {
		return nil, err
	}
	r.Created = time.Now()
	if _, err := b.c.AppsV1().Deployments(podsNamespace).Create(ctx, deployment(r.Deployment, s.Node, n), metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("deployment %s: %w", r.Deployment, err)
	}
	if err := w.wait(ctx, b.o.roundTimeout, func(pods map[string]*podTimes) (string, bool) {
		running := 0
		for _, p := range pods {
			if !p.Running.IsZero() {
				running++
			}
		}
		return fmt.Sprintf("%d of %d pods of %s Running", running, n, r.Deployment), running >= n
	}); err != nil {
		return nil, err
	}
	r.DeleteCalled = time.Now()
	bg := metav1.DeletePropagationBackground
	if err := b.c.AppsV1().Deployments(podsNamespace).Delete(ctx, r.Deployment, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
		return nil, fmt.Errorf("delete deployment %s: %w", r.Deployment, err)
	}
	if err := w.wait(ctx, b.o.roundTimeout, func(pods map[string]*podTimes) (string, bool) {
		gone := 0
		for _, p := range pods {
			if !p.Gone.IsZero() {
				gone++
			}
		}
		return fmt.Sprintf("%d of %d pods of %s gone", gone, len(pods), r.Deployment), gone == len(pods)
	}); err != nil {
		return nil, err
	}
	after, err := b.scrape(ctx, s.Node)
	if err != nil {
		return nil, err
	}
	r.Metrics = diff(before, after)
	r.Pods = w.snapshot()
	for _, p := range r.Pods {
		if p.Running.After(r.AllRunning) {
			r.AllRunning = p.Running
		}
		if p.Gone.After(r.AllGone) {
			r.AllGone = p.Gone
		}
	}
	return r, nil
}

// deployment is a round's Deployment: n busybox pods pinned to node,
// which exit at once on SIGTERM (so that deletion is not a grace period).
func deployment(name, node string, n int) *appsv1.Deployment {
	labels := map[string]string{appLabel: appName, roundLabel: name}
	replicas := int32(n)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: podsNamespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: nodeSelector(node),
					Containers: []corev1.Container{{
						Name: "sleep", Image: kube.BusyboxImage, ImagePullPolicy: corev1.PullNever,
						Command: []string{"sh", "-c", "trap 'exit 0' TERM; sleep 1000000000 & wait"},
					}},
				},
			},
		},
	}
}

// podWatch follows the pods of a selector and times what it sees.
type podWatch struct {
	mu      sync.Mutex
	pods    map[string]*podTimes
	err     error
	changed chan struct{}
}

// watchPods starts following the pods of selector from now on, until
// ctx ends.
func watchPods(ctx context.Context, b *bench, selector string) (*podWatch, error) {
	list, err := b.c.CoreV1().Pods(podsNamespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("pods %s: %w", selector, err)
	}
	w := &podWatch{pods: map[string]*podTimes{}, changed: make(chan struct{}, 1)}
	go w.run(ctx, b, selector, list.ResourceVersion)
	return w, nil
}

// run follows the pods, watching again from the last version seen when
// the server ends a watch.
func (w *podWatch) run(ctx context.Context, b *bench, selector, rv string) {
	for ctx.Err() == nil {
		wi, err := b.c.CoreV1().Pods(podsNamespace).Watch(ctx, metav1.ListOptions{LabelSelector: selector, ResourceVersion: rv, AllowWatchBookmarks: true})
		if err != nil {
			w.fail(fmt.Errorf("watch pods %s: %w", selector, err))
			return
		}
		for ev := range wi.ResultChan() {
			now := time.Now()
			if ev.Type == watch.Error {
				wi.Stop()
				w.fail(fmt.Errorf("watch pods %s: %w", selector, apierrors.FromObject(ev.Object)))
				return
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			rv = p.ResourceVersion
			if ev.Type != watch.Bookmark {
				w.observe(p, ev.Type == watch.Deleted, now)
			}
		}
	}
}

func (w *podWatch) fail(err error) {
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
	w.signal()
}

func (w *podWatch) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// observe records what a pod's event shows for the first time.
func (w *podWatch) observe(p *corev1.Pod, deleted bool, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.pods[p.Name]
	if t == nil {
		t = &podTimes{Name: p.Name, Created: now, CreationTimestamp: p.CreationTimestamp.Time}
		w.pods[p.Name] = t
	}
	first := func(at *time.Time, cond bool) {
		if cond && at.IsZero() {
			*at = now
		}
	}
	first(&t.Scheduled, p.Spec.NodeName != "")
	first(&t.Running, p.Status.Phase == corev1.PodRunning)
	first(&t.Ready, podReady(p))
	first(&t.Deleting, p.DeletionTimestamp != nil)
	first(&t.Gone, deleted)
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Running != nil && t.ContainerStarted.IsZero() {
			t.ContainerStarted = c.State.Running.StartedAt.Time
		}
	}
	w.signal()
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// wait returns once cond holds over the pods seen, or fails after
// timeout with what cond last said.
func (w *podWatch) wait(ctx context.Context, timeout time.Duration, cond func(map[string]*podTimes) (string, bool)) error {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		err := w.err
		status, ok := cond(w.pods)
		w.mu.Unlock()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", status, ctx.Err())
		case <-deadline:
			return fmt.Errorf("%s after %s", status, timeout)
		case <-w.changed:
		}
	}
}

// snapshot is the pods seen, by name.
func (w *podWatch) snapshot() []*podTimes {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*podTimes
	for _, p := range w.pods {
		c := *p
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// poll checks cond until it holds, for up to timeout.
func poll(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) (string, bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		status, ok, err := cond(ctx)
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: not after %s (%s)", what, timeout, status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (%s)", what, ctx.Err(), status)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
