package podrules

import (
	"fmt"
	"net"
	"testing"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

// benchOps measures what one plugin invocation costs, with other pods'
// masquerade rules already in place: open a Conn, run the measured
// operation (add or delete one attachment's masquerade rule), close.
// Each iteration first runs undo (untimed unless timeUndo) so that every
// measured operation does the same work.
func benchOps(b *testing.B, op, undo func(*Conn, attachment.ID, []*net.IPNet) error, timeUndo bool) {
	for _, existing := range []int{0, 100, 1000} {
		b.Run(fmt.Sprintf("existing=%d", existing), func(b *testing.B) {
			ns := nfttest.NS(b, "nftbench")
			c, err := New(ns.Fd())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			for i := 0; i < existing; i++ {
				a := attachment.ID{Network: "bench", ContainerID: fmt.Sprintf("old%04d", i), IfName: "eth0"}
				if err := c.AddMasquerade(a, []*net.IPNet{{IP: net.IPv4(10, 60, byte(i/256), byte(i)), Mask: net.CIDRMask(16, 32)}}); err != nil {
					b.Fatal(err)
				}
			}
			a := attachment.ID{Network: "bench", ContainerID: "new", IfName: "eth0"}
			ips := []*net.IPNet{{IP: net.IPv4(10, 61, 0, 2), Mask: net.CIDRMask(16, 32)}}
			run := func(f func(*Conn, attachment.ID, []*net.IPNet) error) {
				c, err := New(ns.Fd())
				if err != nil {
					b.Fatal(err)
				}
				if err := f(c, a, ips); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if !timeUndo {
					b.StopTimer()
				}
				run(undo)
				if !timeUndo {
					b.StartTimer()
				}
				run(op)
			}
		})
	}
}

func add(c *Conn, a attachment.ID, ips []*net.IPNet) error { return c.AddMasquerade(a, ips) }
func del(c *Conn, a attachment.ID, _ []*net.IPNet) error   { return c.DelAttachment(a) }

// BenchmarkPluginADDDEL: an ADD and a DEL per iteration (ns/op is their
// sum).
func BenchmarkPluginADDDEL(b *testing.B) { benchOps(b, add, del, true) }

// BenchmarkPluginADD: ADD alone.
func BenchmarkPluginADD(b *testing.B) { benchOps(b, add, del, false) }

// BenchmarkPluginDEL: DEL alone.
func BenchmarkPluginDEL(b *testing.B) { benchOps(b, del, add, false) }
