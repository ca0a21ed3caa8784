// Package logtest holds a log sink for tests whose code under test logs
// from goroutines of its own.
package logtest

import "sync"

// Buffer is a log sink safe for concurrent writers; its zero value is
// empty and ready to use.
type Buffer struct {
	mu sync.Mutex
	b  []byte
}

// Write appends p.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

// String is everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}
