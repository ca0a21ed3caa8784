package services

import (
	"reflect"
	"testing"
	"time"
)

// TestQueue: a burst of changes wakes the loop once and is taken whole; a
// failed batch put back is retried with the next one, keeping the age of
// its oldest change.
func TestQueue(t *testing.T) {
	q := newQueue()
	if p := q.pending(time.Now()); p != 0 {
		t.Fatalf("pending of an empty queue: %s", p)
	}
	q.add("ns/a", "", "ns/b")
	q.add("ns/a")
	select {
	case <-q.wake:
	default:
		t.Fatal("no wake")
	}
	select {
	case <-q.wake:
		t.Fatal("woken twice for one burst")
	default:
	}
	b := q.take()
	if want := map[string]bool{"ns/a": true, "ns/b": true}; !reflect.DeepEqual(b.keys, want) || b.all || b.since.IsZero() {
		t.Fatalf("batch %+v, want keys %v", b, want)
	}
	if p := q.pending(time.Now()); p != 0 {
		t.Fatalf("pending after take: %s", p)
	}
	q.addAll()
	q.putBack(b)
	b2 := q.take()
	if !b2.all || !b2.keys["ns/a"] || !b2.since.Equal(b.since) {
		t.Fatalf("batch with the failed one put back: %+v", b2)
	}
	if p := q.pending(b.since.Add(time.Second)); p != 0 {
		t.Fatalf("pending after take: %s", p)
	}
	q.putBack(b2)
	if p := q.pending(b.since.Add(time.Second)); p != time.Second {
		t.Fatalf("pending of a failed batch: %s, want its age", p)
	}
}
