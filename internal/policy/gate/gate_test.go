package gate

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/testing/poll"
)

var pod = Pod{Namespace: "ns", Name: "web-0", UID: "0b7a4e0c-2f6e-4c59-9a43-2f1c2d7b1f00",
	IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00:10:244:1::5")}}

// socketPath is a fresh socket path, short enough for sun_path.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gate-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "policy.sock")
}

// serve runs Serve on path until the test ends (or the returned cancel),
// once its socket is there; the test fails if Serve fails.
func serve(t *testing.T, path string, handle func(context.Context, Pod) error) (cancel func(), done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, path, handle); close(errc) }()
	poll.Until(t, 5*time.Second, "the gate's socket", func() bool {
		select {
		case err := <-errc:
			t.Fatalf("Serve: %v", err)
		default:
		}
		fi, err := os.Lstat(path)
		return err == nil && fi.Mode().Type() == fs.ModeSocket
	})
	t.Cleanup(func() {
		cancel()
		if err, ok := <-errc; ok && err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return cancel, errc
}

// notify is Notify bounded by 5 s.
func notify(path string, p Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Notify(ctx, path, p)
}

// TestRoundTrip: the handler sees the pod the plugin sent, and the
// plugin gets the handler's answer.
func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pod     Pod
		answer  error
		wantErr string
	}{
		{"accepted, dual stack", pod, nil, ""},
		{"accepted, no UID", Pod{Namespace: "a", Name: "b", IPs: []netip.Addr{netip.MustParseAddr("fd00::7")}}, nil, ""},
		{"refused", pod, errors.New("policy of ns/web-0 not programmed: netlink: EBUSY"), "agent: policy of ns/web-0 not programmed: netlink: EBUSY"},
		{"long refusal is cut", pod, errors.New(strings.Repeat("<", 10*maxMessage)), "agent: <<<"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := socketPath(t)
			got := make(chan Pod, 1)
			serve(t, path, func(_ context.Context, p Pod) error {
				got <- p
				return tc.answer
			})
			err := notify(path, tc.pod)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Notify: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Notify: %v, want an error with %q", err, tc.wantErr)
			}
			if p := <-got; !reflect.DeepEqual(p, tc.pod) {
				t.Errorf("handler got %+v, want %+v", p, tc.pod)
			}
		})
	}
}

// TestConcurrent: requests are handled concurrently: every handler waits
// until all of them have started.
func TestConcurrent(t *testing.T) {
	const n = 8
	path := socketPath(t)
	var started sync.WaitGroup
	started.Add(n)
	all := make(chan struct{})
	go func() { started.Wait(); close(all) }()
	serve(t, path, func(ctx context.Context, p Pod) error {
		started.Done()
		select {
		case <-all:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	errs := make(chan error, n)
	for i := range n {
		go func() {
			p := pod
			p.Name = fmt.Sprintf("web-%d", i)
			errs <- notify(path, p)
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestBadRequests: a malformed, oversized or incomplete request gets an
// error answer, never reaches the handler, and the gate goes on serving.
func TestBadRequests(t *testing.T) {
	path := socketPath(t)
	var handled atomic.Int32
	serve(t, path, func(context.Context, Pod) error {
		handled.Add(1)
		return nil
	})
	for _, tc := range []struct {
		name, req, want string
		// hangUp closes the client's writing side after the request.
		hangUp bool
	}{
		{"malformed JSON", "{\"namespace\": \n", "bad request: unexpected end of JSON input", false},
		{"not an object", "[1,2]\n", "bad request: json: cannot unmarshal array", false},
		{"oversized", `{"namespace":"` + strings.Repeat("a", 2*maxMessage) + "\"}\n", "longer than 4096 bytes", false},
		{"no namespace", `{"name":"a","ips":["10.0.0.1"]}` + "\n", "pod has no namespace", false},
		{"no name", `{"namespace":"a","ips":["10.0.0.1"]}` + "\n", "pod has no name", false},
		{"long name", `{"namespace":"a","name":"` + strings.Repeat("n", 254) + `","ips":["10.0.0.1"]}` + "\n", "pod name is 254 bytes long", false},
		{"no IP", `{"namespace":"a","name":"b"}` + "\n", "pod a/b has no IP address", false},
		{"bad IP", `{"namespace":"a","name":"b","ips":["10.0.0.300"]}` + "\n", "ParseAddr", false},
		{"empty IP", `{"namespace":"a","name":"b","ips":[""]}` + "\n", "invalid IP address", false},
		{"zoned IP", `{"namespace":"a","name":"b","ips":["fe80::1%eth0"]}` + "\n", "invalid IP address", false},
		{"no newline", `{"namespace":"a","name":"b","ips":["10.0.0.1"]}`, "not terminated by a newline", true},
		{"nothing", "", "bad request: EOF", true},
		{"data after the request", `{"namespace":"ns","name":"web-0","ips":["10.0.0.1"]}` + "\nmore\n", "data after the request", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte(tc.req)); err != nil {
				t.Fatal(err)
			}
			if tc.hangUp {
				c.(*net.UnixConn).CloseWrite()
			}
			line, err := bufio.NewReader(c).ReadBytes('\n')
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			var r response
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatalf("answer %q: %v", line, err)
			}
			if !strings.Contains(r.Error, tc.want) {
				t.Errorf("answer %q, want an error with %q", r.Error, tc.want)
			}
		})
	}
	if n := handled.Load(); n != 0 {
		t.Errorf("%d bad requests reached the handler", n)
	}
	if err := notify(path, pod); err != nil {
		t.Errorf("Notify after the bad requests: %v", err)
	}
	if n := handled.Load(); n != 1 {
		t.Errorf("the handler ran %d times for one good request", n)
	}
}

// TestNotifyRefusesBadPod: Notify checks the pod before it connects.
func TestNotifyRefusesBadPod(t *testing.T) {
	path := socketPath(t)
	serve(t, path, func(_ context.Context, p Pod) error {
		t.Errorf("handler called with %+v", p)
		return nil
	})
	for _, p := range []Pod{{}, {Namespace: "a", Name: "b"}, {Namespace: "a", IPs: pod.IPs}, {Namespace: "a", Name: "b", IPs: []netip.Addr{{}}}} {
		if err := notify(path, p); err == nil {
			t.Errorf("Notify(%+v) succeeded", p)
		}
	}
}

// TestSocket: the socket is its owner's only; Serve replaces a stale
// socket, refuses a live one and any other file, and removes its socket
// when it ends, unless another has replaced it.
func TestSocket(t *testing.T) {
	ok := func(context.Context, Pod) error { return nil }
	t.Run("mode 0600, removed at the end", func(t *testing.T) {
		path := socketPath(t)
		cancel, done := serve(t, path, ok)
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
		}
		if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*")); len(leftovers) != 0 {
			t.Errorf("temporary files left: %v", leftovers)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket still there after Serve: %v", err)
		}
	})
	t.Run("stale socket replaced", func(t *testing.T) {
		path := socketPath(t)
		staleSocket(t, path)
		serve(t, path, ok)
		if err := notify(path, pod); err != nil {
			t.Errorf("Notify: %v", err)
		}
	})
	t.Run("directory created", func(t *testing.T) {
		path := filepath.Join(filepath.Dir(socketPath(t)), "run", "podnet", "policy.sock")
		serve(t, path, ok)
	})
	t.Run("live socket refused", func(t *testing.T) {
		path := socketPath(t)
		serve(t, path, ok)
		err := Serve(context.Background(), path, ok)
		if err == nil || !strings.Contains(err.Error(), "another process answers") {
			t.Errorf("second Serve: %v", err)
		}
		if err := notify(path, pod); err != nil {
			t.Errorf("Notify to the first: %v", err)
		}
	})
	t.Run("other file refused", func(t *testing.T) {
		path := socketPath(t)
		if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		err := Serve(context.Background(), path, ok)
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("Serve over a file: %v", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "x" {
			t.Errorf("the file was touched: %q, %v", b, err)
		}
	})
	t.Run("a replacement is not removed", func(t *testing.T) {
		path := socketPath(t)
		cancel, done := serve(t, path, ok)
		os.Remove(path)
		staleSocket(t, path)
		cancel()
		<-done
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("the replacing socket was removed: %v", err)
		}
	})
}

// staleSocket leaves a socket file at path that nobody answers on.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

// TestCancel: Notify gives up when its context ends, and the handler's
// context then ends too; Serve's end ends the handlers' contexts and
// Serve waits for them.
func TestCancel(t *testing.T) {
	t.Run("plugin gives up", func(t *testing.T) {
		path := socketPath(t)
		ended := make(chan error, 1)
		serve(t, path, func(ctx context.Context, _ Pod) error {
			<-ctx.Done()
			ended <- ctx.Err()
			return ctx.Err()
		})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := Notify(ctx, path, pod)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Notify: %v, want the deadline", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("Notify took %v past its deadline of 100ms", d)
		}
		select {
		case <-ended:
		case <-time.After(5 * time.Second):
			t.Error("the handler's context did not end when the plugin hung up")
		}
	})
	t.Run("agent stops", func(t *testing.T) {
		path := socketPath(t)
		in := make(chan struct{})
		cancel, done := serve(t, path, func(ctx context.Context, _ Pod) error {
			close(in)
			<-ctx.Done()
			return errors.New("agent stopping")
		})
		errc := make(chan error, 1)
		go func() { errc <- notify(path, pod) }()
		<-in
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if err := <-errc; err == nil || !strings.Contains(err.Error(), "agent stopping") {
			t.Errorf("Notify: %v, want the handler's error", err)
		}
	})
}

// TestNoListener: with no socket, or a socket nobody answers on, Notify
// returns nil at once.
func TestNoListener(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"no socket", func(*testing.T, string) {}},
		{"no directory", func(t *testing.T, path string) { os.Remove(filepath.Dir(path)) }},
		{"stale socket", staleSocket},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := socketPath(t)
			tc.setup(t, path)
			start := time.Now()
			if err := notify(path, pod); err != nil {
				t.Errorf("Notify: %v", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Notify took %v", d)
			}
		})
	}
}

// BenchmarkNotify is the gate's round trip when the agent answers at
// once: what the gate adds to a pod's ADD beyond the agent's own work.
func BenchmarkNotify(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, "policy.sock")
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, path, func(context.Context, Pod) error { return nil }) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			b.Errorf("Serve: %v", err)
		}
	}()
	poll.Until(b, 5*time.Second, "the gate's socket", func() bool {
		_, err := os.Lstat(path)
		return err == nil
	})
	b.ResetTimer()
	for range b.N {
		if err := notify(path, pod); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNotifyNoAgent is Notify's cost when nobody listens.
func BenchmarkNotifyNoAgent(b *testing.B) {
	path := filepath.Join(b.TempDir(), "policy.sock")
	for range b.N {
		if err := notify(path, pod); err != nil {
			b.Fatal(err)
		}
	}
}
