package netns

import (
	"context"
	"net"
)

// DialContext connects to addr on network as d.DialContext does (a zero
// net.Dialer when d is nil), with a socket created inside the namespace:
// a socket stays in the namespace it was created in, whichever thread
// uses it later, so the connection works from any goroutine.
func (n *NS) DialContext(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	var conn net.Conn
	err := n.Do(func() error {
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Dialer returns a dial function (for http.Transport's DialContext or
// rest.Config's Dial) connecting with d from inside the network namespace
// at path, which it opens for each connection: it holds no descriptor
// between connections.
func Dialer(path string, d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ns, err := Open(path)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		return ns.DialContext(ctx, d, network, addr)
	}
}
