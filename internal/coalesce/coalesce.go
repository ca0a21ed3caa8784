// Package coalesce collects the changes a controller's sync loop must
// handle between two syncs, so that a burst of informer events costs one
// sync: the keys ("namespace/name") of the objects that changed, or all
// of them, and since when a change has been waiting.
package coalesce

import (
	"sync"
	"time"
)

// Queue collects what changed between two syncs. It wakes the sync loop
// once per burst. The zero Queue is not usable; New makes one.
type Queue struct {
	mu    sync.Mutex
	keys  map[string]bool
	all   bool
	since time.Time // when the oldest waiting change came; zero: none waits
	wake  chan struct{}
}

// New returns an empty queue.
func New() *Queue {
	return &Queue{keys: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// Wake receives once per burst of changes: the loop then Takes them.
func (q *Queue) Wake() <-chan struct{} { return q.wake }

// Add queues the objects of keys ("" is none).
func (q *Queue) Add(keys ...string) {
	q.mu.Lock()
	for _, k := range keys {
		if k != "" {
			q.keys[k] = true
		}
	}
	q.waiting(time.Now())
	q.mu.Unlock()
}

// AddAll queues every object.
func (q *Queue) AddAll() {
	q.mu.Lock()
	q.all = true
	q.waiting(time.Now())
	q.mu.Unlock()
}

// waiting notes a change at now and wakes the loop; q.mu is held.
func (q *Queue) waiting(now time.Time) {
	if q.since.IsZero() {
		q.since = now
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Batch is what a sync takes from the queue.
type Batch struct {
	// Keys are the objects that changed.
	Keys map[string]bool
	// All is true when every object is to be synced.
	All bool
	// Since is when the oldest change of the batch came.
	Since time.Time
}

// Empty reports whether the batch holds nothing to sync.
func (b Batch) Empty() bool { return !b.All && len(b.Keys) == 0 }

// Take empties the queue.
func (q *Queue) Take() Batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	b := Batch{Keys: q.keys, All: q.all, Since: q.since}
	q.keys, q.all, q.since = map[string]bool{}, false, time.Time{}
	return b
}

// PutBack returns a batch whose sync failed, so the next one retries it.
func (q *Queue) PutBack(b Batch) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for k := range b.Keys {
		q.keys[k] = true
	}
	q.all = q.all || b.All
	if q.since.IsZero() || b.Since.Before(q.since) {
		q.since = b.Since
	}
}

// Pending is how long the oldest waiting change has waited at now, 0
// when none waits.
func (q *Queue) Pending(now time.Time) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.since.IsZero() {
		return 0
	}
	return now.Sub(q.since)
}
