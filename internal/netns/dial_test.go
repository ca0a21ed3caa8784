package netns

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestDial connects to a listener on the loopback of a fresh namespace,
// which only a socket made inside that namespace reaches.
func TestDial(t *testing.T) {
	tmp := newTemp(t)
	var ln net.Listener
	if err := tmp.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, err = c.Write([]byte("x"))
			c.Close()
			accepted <- err
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		dial func(ctx context.Context, network, addr string) (net.Conn, error)
	}{
		{"NS.DialContext", func(ctx context.Context, network, addr string) (net.Conn, error) {
			return tmp.DialContext(ctx, nil, network, addr)
		}},
		{"NS.DialContext with a dialer", func(ctx context.Context, network, addr string) (net.Conn, error) {
			return tmp.DialContext(ctx, &net.Dialer{Timeout: 5 * time.Second}, network, addr)
		}},
		{"Dialer", Dialer(tmp.Path(), nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.dial(ctx, "tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := c.Read(b); err != nil || b[0] != 'x' {
				t.Fatalf("read %q: %v", b, err)
			}
			if err := <-accepted; err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := Dialer(filepath.Join(t.TempDir(), "gone"), nil)(ctx, "tcp", ln.Addr().String()); !errors.Is(err, ErrNotExist) {
		t.Errorf("dial from a missing namespace: %v, want ErrNotExist", err)
	}
}
