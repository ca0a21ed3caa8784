package podrules

import (
	"fmt"
	"net"
	"testing"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/podnet/podnet/internal/nft/nfttest"
)

// BenchmarkPluginADDDEL measures what one plugin invocation costs: open a
// Conn, add (or delete) one attachment's masquerade rule, close, with
// other pods' rules already in the chain.
func BenchmarkPluginADDDEL(b *testing.B) {
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
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, err := New(ns.Fd())
				if err != nil {
					b.Fatal(err)
				}
				if i%2 == 0 {
					err = c.AddMasquerade(a, ips)
				} else {
					err = c.DelAttachment(a)
				}
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
