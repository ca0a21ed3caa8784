package controller

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podnet/podnet/internal/cluster"
)

// fake is a controller driven by the test.
type fake struct {
	name    string
	run     func(ctx context.Context, h *Health) error
	running atomic.Int32
	starts  atomic.Int32
}

func (f *fake) Name() string { return f.name }

func (f *fake) Run(ctx context.Context, h *Health) error {
	f.starts.Add(1)
	f.running.Add(1)
	defer f.running.Add(-1)
	return f.run(ctx, h)
}

func newManager(t *testing.T) (*Manager, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return NewManager(slog.New(slog.NewTextHandler(io.Discard, nil)), reg), reg
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRunJoinsEveryController: Run returns only once every controller has
// returned, even one slow to stop, so nothing shared closes under it.
func TestRunJoinsEveryController(t *testing.T) {
	m, _ := newManager(t)
	slow := &fake{name: "slow", run: func(ctx context.Context, h *Health) error {
		h.Ready()
		<-ctx.Done()
		time.Sleep(200 * time.Millisecond)
		return nil
	}}
	quick := &fake{name: "quick", run: func(ctx context.Context, h *Health) error {
		h.Ready()
		<-ctx.Done()
		return nil
	}}
	m.Add(slow)
	m.Add(quick)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	eventually(t, "both running", func() bool { return slow.running.Load() == 1 && quick.running.Load() == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if slow.running.Load() != 0 || quick.running.Load() != 0 {
		t.Fatal("Run returned while a controller was still running")
	}
}

// TestFailingControllerIsRestarted: a failing controller is reported not
// ready with its error, counted, and restarted; the others keep running
// and ready.
func TestFailingControllerIsRestarted(t *testing.T) {
	m, reg := newManager(t)
	var fail atomic.Bool
	fail.Store(true)
	flaky := &fake{name: "flaky", run: func(ctx context.Context, h *Health) error {
		if fail.Load() {
			return errors.New("boom")
		}
		h.Ready()
		<-ctx.Done()
		return nil
	}}
	steady := &fake{name: "steady", run: func(ctx context.Context, h *Health) error {
		h.Ready()
		<-ctx.Done()
		return nil
	}}
	m.Add(flaky)
	m.Add(steady)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	eventually(t, "the failure reported", func() bool { return strings.Contains(m.NotReady(), "flaky: failed, restarting in 1s: boom") })
	if strings.Contains(m.NotReady(), "steady") || steady.starts.Load() != 1 {
		t.Fatalf("the steady controller was disturbed: %q, %d starts", m.NotReady(), steady.starts.Load())
	}
	if got := testutil.ToFloat64(m.ready); got != 0 {
		t.Fatalf("podnet_agent_ready = %v while a controller failed", got)
	}
	fail.Store(false)
	eventually(t, "the restart", func() bool { return m.NotReady() == "" })
	if flaky.starts.Load() < 2 {
		t.Fatalf("flaky started %d times", flaky.starts.Load())
	}
	if got := testutil.ToFloat64(m.restarts.WithLabelValues("flaky")); got < 1 {
		t.Fatalf("restarts = %v", got)
	}
	if got := testutil.ToFloat64(m.ready); got != 1 {
		t.Fatalf("podnet_agent_ready = %v once every controller is ready", got)
	}
	var st cluster.NodeStatus
	m.FillStatus(&st)
	if !st.Ready || len(st.Controllers) != 2 || st.Controllers[0].Name != "flaky" || st.Controllers[0].Restarts < 1 {
		t.Fatalf("status %+v", st)
	}
	if n, err := testutil.GatherAndCount(reg, "podnet_agent_controller_ready"); err != nil || n != 2 {
		t.Fatalf("controller_ready series: %d, %v", n, err)
	}
}

// TestReadinessFollowsControllers: readiness is not latched; a controller
// that reports not ready again makes the agent not ready again.
func TestReadinessFollowsControllers(t *testing.T) {
	m, _ := newManager(t)
	healthy := make(chan bool)
	c := &fake{name: "routes", run: func(ctx context.Context, h *Health) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case ok := <-healthy:
				if ok {
					h.Ready()
				} else {
					h.NotReady("reconcile: %s", "no route to peer")
				}
			}
		}
	}}
	m.Add(c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	if m.NotReady() != "routes: starting" {
		t.Fatalf("before the first report: %q", m.NotReady())
	}
	for _, ok := range []bool{true, false, true, false} {
		healthy <- ok
		healthy <- ok // the second send returns once the first was handled
		want := ""
		if !ok {
			want = "routes: reconcile: no route to peer"
		}
		if got := m.NotReady(); got != want {
			t.Fatalf("after reporting %v: NotReady() = %q, want %q", ok, got, want)
		}
		if got := testutil.ToFloat64(m.ready); (got == 1) != ok {
			t.Fatalf("after reporting %v: podnet_agent_ready = %v", ok, got)
		}
	}
}

// TestPanicIsAFailure: a panicking controller is restarted, not fatal.
func TestPanicIsAFailure(t *testing.T) {
	m, _ := newManager(t)
	var n atomic.Int32
	c := &fake{name: "p", run: func(ctx context.Context, h *Health) error {
		if n.Add(1) == 1 {
			panic("oops")
		}
		h.Ready()
		<-ctx.Done()
		return nil
	}}
	m.Add(c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	eventually(t, "the restart after the panic", func() bool { return m.NotReady() == "" && n.Load() == 2 })
}

func TestVar(t *testing.T) {
	v := NewVar[int]()
	if _, ok, _ := v.Load(); ok {
		t.Fatal("a new Var holds a value")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan int)
	go func() {
		x, err := v.Wait(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- x
	}()
	v.Set(7)
	if x := <-got; x != 7 {
		t.Fatalf("Wait = %d", x)
	}
	x, ok, changed := v.Load()
	if !ok || x != 7 {
		t.Fatalf("Load = %d, %v", x, ok)
	}
	select {
	case <-changed:
		t.Fatal("changed closed before a Set")
	default:
	}
	v.Set(8)
	select {
	case <-changed:
	default:
		t.Fatal("changed not closed by a Set")
	}
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if _, err := NewVar[string]().Wait(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on a cancelled context: %v", err)
	}
}
