// Package poll waits in tests for a condition, polling it with a
// deadline instead of sleeping a fixed time.
package poll

import (
	"testing"
	"time"
)

// interval is how often Until checks its condition.
const interval = 20 * time.Millisecond

// Until polls cond until it holds, failing the test when it still does
// not after timeout; what names the awaited state in the failure.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(interval)
	}
}
