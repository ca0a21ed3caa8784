package coalesce

import (
	"reflect"
	"testing"
	"time"
)

// TestQueue: a burst of changes wakes the loop once and is taken whole; a
// failed batch put back is retried with the next one, keeping the age of
// its oldest change.
func TestQueue(t *testing.T) {
	q := New()
	if p := q.Pending(time.Now()); p != 0 {
		t.Fatalf("pending of an empty queue: %s", p)
	}
	q.Add("ns/a", "", "ns/b")
	q.Add("ns/a")
	select {
	case <-q.Wake():
	default:
		t.Fatal("no wake")
	}
	select {
	case <-q.Wake():
		t.Fatal("woken twice for one burst")
	default:
	}
	b := q.Take()
	if want := map[string]bool{"ns/a": true, "ns/b": true}; !reflect.DeepEqual(b.Keys, want) || b.All || b.Since.IsZero() {
		t.Fatalf("batch %+v, want keys %v", b, want)
	}
	if p := q.Pending(time.Now()); p != 0 {
		t.Fatalf("pending after take: %s", p)
	}
	q.AddAll()
	q.PutBack(b)
	b2 := q.Take()
	if !b2.All || !b2.Keys["ns/a"] || !b2.Since.Equal(b.Since) {
		t.Fatalf("batch with the failed one put back: %+v", b2)
	}
	if p := q.Pending(b.Since.Add(time.Second)); p != 0 {
		t.Fatalf("pending after take: %s", p)
	}
	q.PutBack(b2)
	if p := q.Pending(b.Since.Add(time.Second)); p != time.Second {
		t.Fatalf("pending of a failed batch: %s, want its age", p)
	}
}
