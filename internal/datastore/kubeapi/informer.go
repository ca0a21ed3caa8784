package kubeapi

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// nodeInformer follows the Node objects: a cache of what podnet reads of
// them (trimmed: name, podnet's annotations, podCIDRs), a channel closed
// at each change, and whether listing and watching works.
type nodeInformer struct {
	inf cache.SharedIndexInformer
	log *slog.Logger

	mu           sync.Mutex
	changed      chan struct{}
	failingSince time.Time // zero while the last list or watch request succeeded
	lastErr      error
}

func newNodeInformer(client kubernetes.Interface, log *slog.Logger) *nodeInformer {
	ni := &nodeInformer{log: log, changed: make(chan struct{})}
	nodes := client.CoreV1().Nodes()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			var l *corev1.NodeList
			err := ni.untilReached(ctx, func() (err error) {
				l, err = nodes.List(ctx, opts)
				return err
			})
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			var w watch.Interface
			err := ni.untilReached(ctx, func() (err error) {
				w, err = nodes.Watch(ctx, opts)
				return err
			})
			return w, err
		},
	}
	ni.inf = cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})
	// Neither fails before the informer runs.
	_ = ni.inf.SetTransform(trimNode)
	_ = ni.inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) { ni.result(err) })
	notify := func(any) { ni.notify() }
	_, _ = ni.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    notify,
		UpdateFunc: func(_, _ any) { ni.notify() },
		DeleteFunc: notify,
	})
	return ni
}

// run runs the informer until ctx ends.
func (ni *nodeInformer) run(ctx context.Context) { ni.inf.RunWithContext(ctx) }

// waitSynced waits for the first complete list; false when ctx ended first.
func (ni *nodeInformer) waitSynced(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), ni.inf.HasSynced)
}

// changes is a channel closed at the next change of a Node: a consumer
// takes it, reads the cache, then waits on it, and so misses nothing.
func (ni *nodeInformer) changes() <-chan struct{} {
	ni.mu.Lock()
	defer ni.mu.Unlock()
	return ni.changed
}

func (ni *nodeInformer) notify() {
	ni.mu.Lock()
	defer ni.mu.Unlock()
	close(ni.changed)
	ni.changed = make(chan struct{})
}

// reconnectBackoff spaces the informer's own retries while the API
// server cannot be reached: 250 ms, doubling up to 5 s (as the etcd
// datastore reconnects).
func reconnectBackoff() wait.Backoff {
	return wait.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Cap: 5 * time.Second, Steps: math.MaxInt32}
}

// untilReached runs a list or watch request until it reaches the API
// server: success, or an error the server answered with, is returned to
// the informer; a failure to reach the server is retried here, after
// reconnectBackoff, until ctx ends. The informer's own backoff grows to
// 30–60 s over an outage of half a minute and would keep the agent blind
// to Node changes for as long after the server is back (a node deleted or
// added just after a control plane restart); the server's answers, which
// its backoff is for (it spares a loaded server), still go through it.
func (ni *nodeInformer) untilReached(ctx context.Context, req func() error) error {
	b := reconnectBackoff()
	for {
		err := req()
		ni.result(err)
		if err == nil || answered(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(b.Step()):
		}
	}
}

// answered tells whether err is the API server's answer (a status), not a
// failure to reach it.
func answered(err error) bool {
	var st apierrors.APIStatus
	return errors.As(err, &st)
}

// result records the outcome of a list or watch request, or of a watch,
// and logs when the API server stops or starts answering.
func (ni *nodeInformer) result(err error) {
	ni.mu.Lock()
	defer ni.mu.Unlock()
	switch {
	case err == nil:
		if !ni.failingSince.IsZero() {
			ni.log.Info("the Kubernetes API answers the watch of the Nodes again", "after", time.Since(ni.failingSince).Round(time.Millisecond))
		}
		ni.failingSince, ni.lastErr = time.Time{}, nil
	case ni.failingSince.IsZero():
		ni.failingSince, ni.lastErr = time.Now(), err
		ni.log.Warn("the Kubernetes API does not answer the watch of the Nodes; the last known peers stay, retrying", "err", err)
	default:
		ni.lastErr = err
	}
}

// failing is since when listing or watching fails, and the last error;
// a zero time while it works.
func (ni *nodeInformer) failing() (time.Time, error) {
	ni.mu.Lock()
	defer ni.mu.Unlock()
	return ni.failingSince, ni.lastErr
}

// get is the cached Node of that name.
func (ni *nodeInformer) get(name string) (*corev1.Node, bool) {
	obj, ok, err := ni.inf.GetStore().GetByKey(name)
	if err != nil || !ok {
		return nil, false
	}
	n, ok := obj.(*corev1.Node)
	return n, ok
}

// list is every cached Node.
func (ni *nodeInformer) list() []*corev1.Node {
	objs := ni.inf.GetStore().List()
	out := make([]*corev1.Node, 0, len(objs))
	for _, o := range objs {
		if n, ok := o.(*corev1.Node); ok {
			out = append(out, n)
		}
	}
	return out
}

// trimNode keeps of a Node what podnet reads: the cache then holds a few
// hundred bytes per node instead of its images and status.
func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	t := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion},
		Spec:       corev1.NodeSpec{PodCIDRs: n.Spec.PodCIDRs},
	}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, annotationPrefix) {
			if t.Annotations == nil {
				t.Annotations = map[string]string{}
			}
			t.Annotations[k] = v
		}
	}
	return t, nil
}
