package benchlab

import (
	"context"
	"testing"
	"time"
)

func TestCPUTimes(t *testing.T) {
	a, err := cpuTimes()
	if err != nil {
		t.Fatal(err)
	}
	if a.total == 0 || a.idle > a.total {
		t.Fatalf("cpu times %+v", a)
	}
	time.Sleep(50 * time.Millisecond)
	b, err := cpuTimes()
	if err != nil {
		t.Fatal(err)
	}
	if b.total < a.total || b.idle < a.idle {
		t.Errorf("cpu times went back: %+v then %+v", a, b)
	}
}

// TestQuiet: any machine is idle at least 0 % of the time, none more
// than 100 %.
func TestQuiet(t *testing.T) {
	waited, quiet, err := Quiet(context.Background(), 0, 10*time.Second)
	if err != nil || !quiet || waited < 2*time.Second {
		t.Errorf("Quiet(0): waited %v, quiet %v, %v; want quiet after two seconds", waited, quiet, err)
	}
	waited, quiet, err = Quiet(context.Background(), 1.01, 2*time.Second)
	if err != nil || quiet || waited < 2*time.Second {
		t.Errorf("Quiet(1.01): waited %v, quiet %v, %v; want not quiet after the bound", waited, quiet, err)
	}
}
