package routed

import (
	"context"
	"fmt"
	"net"

	"github.com/podnet/podnet/internal/fabric"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// watcher holds netlink subscriptions in the fabric's namespace.
type watcher struct {
	f      *Fabric
	ctx    context.Context
	done   chan struct{}
	errc   chan error
	links  chan netlink.LinkUpdate
	routes chan netlink.RouteUpdate
	neighs chan netlink.NeighUpdate
	// devIndex is the VXLAN device's ifindex when subscribing.
	devIndex int
}

// Subscribe opens link, route and neighbour subscriptions in the fabric's
// namespace and returns once they are in place: an agent that subscribes
// before its first Reconcile misses no disturbance. They are closed when
// ctx ends.
func (f *Fabric) Subscribe(ctx context.Context) (fabric.Watch, error) {
	w := &watcher{
		f: f, ctx: ctx, done: make(chan struct{}), errc: make(chan error, 3),
		links:  make(chan netlink.LinkUpdate, 64),
		routes: make(chan netlink.RouteUpdate, 256),
		neighs: make(chan netlink.NeighUpdate, 256),
	}
	var nsh *netns.NsHandle
	if f.cfg.NetNS != nil {
		h := f.cfg.NetNS.Handle()
		nsh = &h
	}
	onErr := func(err error) {
		select {
		case w.errc <- err:
		default:
		}
	}
	if err := netlink.LinkSubscribeWithOptions(w.links, w.done, netlink.LinkSubscribeOptions{Namespace: nsh, ErrorCallback: onErr}); err != nil {
		close(w.done)
		return nil, fmt.Errorf("fabric: subscribe to links: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(w.routes, w.done, netlink.RouteSubscribeOptions{Namespace: nsh, ErrorCallback: onErr}); err != nil {
		close(w.done)
		return nil, fmt.Errorf("fabric: subscribe to routes: %w", err)
	}
	if err := netlink.NeighSubscribeWithOptions(w.neighs, w.done, netlink.NeighSubscribeOptions{Namespace: nsh, ErrorCallback: onErr}); err != nil {
		close(w.done)
		return nil, fmt.Errorf("fabric: subscribe to neighbours: %w", err)
	}
	// The device's index, learned after subscribing and then from the
	// events themselves, so a recreated device is followed without a query.
	if vx, err := f.device(); err == nil && vx != nil {
		w.devIndex = vx.Index
	}
	go func() {
		<-ctx.Done()
		close(w.done)
	}()
	return w, nil
}

// Run calls trigger whenever the kernel state podnet owns may have been
// disturbed — the VXLAN device or the underlay deleted or down, a route
// with podnet's protocol deleted, a neighbour or FDB entry deleted from the
// VXLAN device — until the watcher's context ends (nil) or a subscription
// fails. trigger runs on Run's goroutine: it should only signal the
// agent's reconcile loop (which coalesces), since podnet's own reconciling
// also raises events.
func (w *watcher) Run(trigger func()) error {
	f, devIndex := w.f, w.devIndex
	ctx, errc, links, routes, neighs := w.ctx, w.errc, w.links, w.routes, w.neighs
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fabric: watch: %w", err)
		case u, ok := <-links:
			if !ok {
				return w.ended("link")
			}
			name := u.Attrs().Name
			if name == f.cfg.Device {
				devIndex = u.Attrs().Index
			}
			if name != f.cfg.Device && name != f.cfg.Underlay {
				continue
			}
			if u.Header.Type == unix.RTM_DELLINK || u.Attrs().Flags&net.FlagUp == 0 {
				trigger()
			}
		case u, ok := <-routes:
			if !ok {
				return w.ended("route")
			}
			if u.Type == unix.RTM_DELROUTE && u.Protocol == RouteProtocol {
				trigger()
			}
		case u, ok := <-neighs:
			if !ok {
				return w.ended("neighbour")
			}
			if u.Type == unix.RTM_DELNEIGH && devIndex != 0 && u.LinkIndex == devIndex && u.State&netlink.NUD_PERMANENT != 0 {
				trigger()
			}
		}
	}
}

// ended is Run's answer to a closed subscription channel.
func (w *watcher) ended(what string) error {
	if w.ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("fabric: %s subscription ended", what)
}
