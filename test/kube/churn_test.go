package kube

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The churn: rounds of pods created and deleted.
const (
	churnRounds = 3
	churnPods   = 30
)

// testChurn creates and deletes churnPods pods churnRounds times (the
// scheduler places them); meanwhile no two live pods may ever hold the
// same IP, and afterwards no node may keep anything of them: IPAM
// allocations, host links, nftables rules.
func testChurn(t *testing.T, ctx context.Context, c *cluster) {
	w := watchPodIPs(t, c)
	for round := 1; round <= churnRounds; round++ {
		var specs []podSpec
		var names []string
		for i := range churnPods {
			s := podSpec{name: fmt.Sprintf("churn-%d-%02d", round, i), step: "churn"}
			specs = append(specs, s)
			names = append(names, s.name)
		}
		start := time.Now()
		t.Cleanup(func() {
			if err := c.deletePods(context.Background(), names...); err != nil {
				t.Error(err)
			}
		})
		if err := c.createPods(ctx, specs...); err != nil {
			t.Fatal(err)
		}
		pods, err := c.waitRunning(ctx, names...)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		running := time.Since(start)
		perNode := map[string]int{}
		for _, p := range pods {
			perNode[p.Spec.NodeName]++
		}
		if err := c.deletePods(ctx, names...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		t.Logf("round %d: %d pods running after %s (per node %v), deleted after %s", round, churnPods,
			running.Round(time.Millisecond), perNode, time.Since(start).Round(time.Millisecond))
	}

	rts := map[string]runtimeapi.RuntimeServiceClient{}
	for _, n := range c.names {
		rts[n] = c.cri(t, n)
	}
	start := time.Now()
	err := poll(ctx, time.Minute, "nothing left of the deleted pods on the nodes", func(ctx context.Context) error {
		var left []string
		for _, n := range c.names {
			l, err := c.leftovers(ctx, rts[n], n)
			if err != nil {
				return err
			}
			for _, x := range l {
				left = append(left, n+": "+x)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("left:\n  %s", strings.Join(left, "\n  "))
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	} else {
		t.Logf("nodes clean %s after the last round", time.Since(start).Round(time.Millisecond))
	}
	pods, ips, dups := w.stop()
	t.Logf("%d pods watched, %d distinct IPs", pods, ips)
	if len(dups) > 0 {
		t.Errorf("an IP held by two live pods at once, %d times:\n  %s", len(dups), strings.Join(first(dups, 10), "\n  "))
	}
}

// ipWatch follows every pod of the cluster and records each time a pod
// holds an IP that another live pod (not being deleted, not finished)
// holds already.
type ipWatch struct {
	stopCh chan struct{}
	halt   func() // closes stopCh once

	mu      sync.Mutex
	holders map[string]map[string]bool // IP → pods holding it
	held    map[string][]string        // pod → its IPs
	pods    map[string]bool            // every pod seen
	ips     map[string]bool            // every IP seen
	dups    []string
}

// watchPodIPs starts the watch; it ends with stop, or when t ends.
func watchPodIPs(t *testing.T, c *cluster) *ipWatch {
	t.Helper()
	w := &ipWatch{stopCh: make(chan struct{}), holders: map[string]map[string]bool{}, held: map[string][]string{},
		pods: map[string]bool{}, ips: map[string]bool{}}
	inf := informers.NewSharedInformerFactory(c.client, 0).Core().V1().Pods().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.update(obj) },
		UpdateFunc: func(_, obj any) { w.update(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				w.mu.Lock()
				w.release(podKey(p))
				w.mu.Unlock()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go inf.Run(w.stopCh)
	var once sync.Once
	w.halt = func() { once.Do(func() { close(w.stopCh) }) }
	t.Cleanup(w.halt)
	if !cache.WaitForCacheSync(w.stopCh, inf.HasSynced) {
		t.Fatal("the pod informer did not sync")
	}
	return w
}

func podKey(p *corev1.Pod) string { return p.Namespace + "/" + p.Name + " (" + string(p.UID) + ")" }

// update records a pod's IPs, if it is live.
func (w *ipWatch) update(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := podKey(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pods[key] = true
	w.release(key)
	if p.Spec.HostNetwork || p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return
	}
	for _, a := range p.Status.PodIPs {
		w.ips[a.IP] = true
		if len(w.holders[a.IP]) > 0 {
			var others []string
			for o := range w.holders[a.IP] {
				others = append(others, o)
			}
			sort.Strings(others)
			w.dups = append(w.dups, fmt.Sprintf("%s: %s while %s holds it", a.IP, key, strings.Join(others, ", ")))
		}
		if w.holders[a.IP] == nil {
			w.holders[a.IP] = map[string]bool{}
		}
		w.holders[a.IP][key] = true
		w.held[key] = append(w.held[key], a.IP)
	}
}

// release forgets the pod's IPs; the caller holds mu.
func (w *ipWatch) release(key string) {
	for _, ip := range w.held[key] {
		delete(w.holders[ip], key)
	}
	delete(w.held, key)
}

// stop ends the watch and returns the number of pods and IPs seen and
// the IPs found held twice.
func (w *ipWatch) stop() (pods, ips int, dups []string) {
	w.halt()
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pods), len(w.ips), w.dups
}
