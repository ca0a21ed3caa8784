package kubeapi

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// nodeInformer follows the Node objects: a cache of what podnet reads of
// them (trimmed: name, podnet's annotations, podCIDRs), a channel closed
// at each change, and whether listing and watching works.
type nodeInformer struct {
	inf cache.SharedIndexInformer

	mu           sync.Mutex
	changed      chan struct{}
	failingSince time.Time // zero while the last list or watch request succeeded
	lastErr      error
}

func newNodeInformer(client kubernetes.Interface, log *slog.Logger) *nodeInformer {
	ni := &nodeInformer{changed: make(chan struct{})}
	nodes := client.CoreV1().Nodes()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			l, err := nodes.List(ctx, opts)
			ni.result(err)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			w, err := nodes.Watch(ctx, opts)
			ni.result(err)
			return w, err
		},
	}
	ni.inf = cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})
	// Neither fails before the informer runs.
	_ = ni.inf.SetTransform(trimNode)
	_ = ni.inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		ni.result(err)
		log.Warn("watch of the Nodes failed; the last known peers stay, retrying", "err", err)
	})
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

// result records the outcome of a list or watch request, or of a watch.
func (ni *nodeInformer) result(err error) {
	ni.mu.Lock()
	defer ni.mu.Unlock()
	switch {
	case err == nil:
		ni.failingSince, ni.lastErr = time.Time{}, nil
	case ni.failingSince.IsZero():
		ni.failingSince, ni.lastErr = time.Now(), err
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
