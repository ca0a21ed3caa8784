package services

import (
	"sync"
	"time"
)

// queue collects what changed between two syncs: the keys
// ("namespace/name") of the Services whose objects changed, or all of
// them, and since when a change has been waiting. It wakes the sync loop
// once per burst.
type queue struct {
	mu    sync.Mutex
	keys  map[string]bool
	all   bool
	since time.Time // when the oldest waiting change came; zero: none waits
	wake  chan struct{}
}

func newQueue() *queue {
	return &queue{keys: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// add queues the Services of keys ("" is none).
func (q *queue) add(keys ...string) {
	q.mu.Lock()
	for _, k := range keys {
		if k != "" {
			q.keys[k] = true
		}
	}
	q.waiting(time.Now())
	q.mu.Unlock()
}

// addAll queues every Service.
func (q *queue) addAll() {
	q.mu.Lock()
	q.all = true
	q.waiting(time.Now())
	q.mu.Unlock()
}

// waiting notes a change at now and wakes the loop; q.mu is held.
func (q *queue) waiting(now time.Time) {
	if q.since.IsZero() {
		q.since = now
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// batch is what a sync takes from the queue.
type batch struct {
	keys  map[string]bool
	all   bool
	since time.Time
}

// take empties the queue.
func (q *queue) take() batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	b := batch{keys: q.keys, all: q.all, since: q.since}
	q.keys, q.all, q.since = map[string]bool{}, false, time.Time{}
	return b
}

// putBack returns a batch whose sync failed, so the next one retries it.
func (q *queue) putBack(b batch) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for k := range b.keys {
		q.keys[k] = true
	}
	q.all = q.all || b.all
	if q.since.IsZero() || b.since.Before(q.since) {
		q.since = b.since
	}
}

// pending is how long the oldest waiting change has waited at now, 0
// when none waits.
func (q *queue) pending(now time.Time) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.since.IsZero() {
		return 0
	}
	return now.Sub(q.since)
}
