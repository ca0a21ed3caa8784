package controller

import (
	"context"
	"sync"
)

// Var is a value one controller produces and others wait for and follow.
// The zero Var is not usable; NewVar makes one.
type Var[T any] struct {
	mu      sync.Mutex
	v       T
	set     bool
	changed chan struct{}
}

// NewVar returns a Var that holds nothing yet.
func NewVar[T any]() *Var[T] {
	return &Var[T]{changed: make(chan struct{})}
}

// Set stores x and wakes everyone waiting for a change.
func (v *Var[T]) Set(x T) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.v, v.set = x, true
	close(v.changed)
	v.changed = make(chan struct{})
}

// Load returns the value, whether one was set, and a channel closed at the
// next Set: a consumer loads, acts, then waits on the channel, and so never
// misses a change.
func (v *Var[T]) Load() (T, bool, <-chan struct{}) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.v, v.set, v.changed
}

// Wait returns the value once one is set, or ctx's error.
func (v *Var[T]) Wait(ctx context.Context) (T, error) {
	for {
		x, ok, changed := v.Load()
		if ok {
			return x, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		}
	}
}
