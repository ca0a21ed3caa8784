package kubeapi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// TestUntilReached: a request that cannot reach the API server is retried
// by the informer itself, quickly, until it does (the reflector's backoff
// would grow to half a minute over an outage); the server's own answers
// go back at once; the failure is recorded meanwhile.
func TestUntilReached(t *testing.T) {
	// What client-go returns when nothing listens at the server's address.
	refused := &url.Error{Op: "Get", URL: "https://192.0.2.1:6443/api/v1/nodes", Err: &net.OpError{
		Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED},
	}}
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "", errors.New("no"))
	tests := []struct {
		name    string
		answers []error // one per call; the last repeats
		cancel  bool
		want    error
		calls   int
		failing bool
	}{
		{name: "answered", answers: []error{nil}, want: nil, calls: 1},
		{name: "refused, then answered", answers: []error{refused, refused, nil}, want: nil, calls: 3},
		{name: "forbidden", answers: []error{forbidden}, want: forbidden, calls: 1, failing: true},
		{name: "refused, then forbidden", answers: []error{refused, forbidden}, want: forbidden, calls: 2, failing: true},
		{name: "refused until the informer stops", answers: []error{refused}, cancel: true, want: refused, calls: 1, failing: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ni := &nodeInformer{log: slog.New(slog.DiscardHandler), changed: make(chan struct{})}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			calls := 0
			start := time.Now()
			err := ni.untilReached(ctx, func() error {
				err := tt.answers[min(calls, len(tt.answers)-1)]
				calls++
				if tt.cancel {
					cancel()
				}
				return err
			})
			if !errors.Is(err, tt.want) || calls != tt.calls {
				t.Errorf("untilReached = %v after %d calls, want %v after %d", err, calls, tt.want, tt.calls)
			}
			if since, _ := ni.failing(); since.IsZero() == tt.failing {
				t.Errorf("failing since %v, want failing %v", since, tt.failing)
			}
			// Two retries wait 250 + 500 ms.
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
}
