package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/testing/nfttest"
)

// The data plane's share of issue 13's bars, in a throwaway namespace:
// go test -run '^$' -bench . -benchtime 20x ./internal/services/dataplane
// Besides the wall time, each reports the process's CPU time in user
// space (user-ms/op, the garbage collector's included) and in the kernel
// (sys-ms/op: the nftables transaction is applied there), steadier
// figures on a loaded machine, and the objects written.

// scales are the numbers of services the benchmarks run at.
var scales = []int{1000, 5000, 10000}

// benchTable returns a table in a throwaway namespace.
func benchTable(b *testing.B) *Table {
	b.Helper()
	ns := nfttest.NS(b, "dpbench")
	tb, err := New(Config{NetNSFd: ns.Fd(), ClusterCIDRs: clusterCIDRs})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tb.Close() })
	return tb
}

// cpuTimes is the CPU time the process spent in user space and in the
// kernel so far.
func cpuTimes(b *testing.B) (user, sys time.Duration) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// measure runs sync b.N times, setup untimed before each, and reports
// the CPU times and the objects written per sync.
func measure(b *testing.B, setup func(i int), sync func() (Stats, error)) {
	b.Helper()
	var user, sys time.Duration
	written := 0
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		setup(i)
		u0, s0 := cpuTimes(b)
		b.StartTimer()
		st, err := sync()
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		u1, s1 := cpuTimes(b)
		user, sys = user+u1-u0, sys+s1-s0
		written += st.Written
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(user.Microseconds())/1e3/float64(b.N), "user-ms/op")
	b.ReportMetric(float64(sys.Microseconds())/1e3/float64(b.N), "sys-ms/op")
	b.ReportMetric(float64(written)/float64(b.N), "written/op")
}

// BenchmarkColdSync programs 10,000 services × 5 endpoints into an empty
// namespace (the bar: < 1 s): remote, the endpoints are on other nodes
// (a cluster of many nodes); local, all on this one (the hairpin set
// holds every endpoint address, the worst case).
func BenchmarkColdSync(b *testing.B) {
	for _, remote := range []bool{true, false} {
		b.Run(map[bool]string{true: "remote", false: "local"}[remote], func(b *testing.B) {
			ns := nfttest.NS(b, "dpcold")
			svcs := manyServices(10000, 5)
			for i := range svcs {
				for j := range svcs[i].Internal {
					svcs[i].Internal[j].Remote = remote
				}
			}
			var tb *Table
			measure(b, func(int) {
				if tb != nil {
					tb.Close()
				}
				if err := Cleanup(ns.Fd()); err != nil {
					b.Fatal(err)
				}
				var err error
				if tb, err = New(Config{NetNSFd: ns.Fd(), ClusterCIDRs: clusterCIDRs}); err != nil {
					b.Fatal(err)
				}
			}, func() (Stats, error) { return tb.Sync(svcs) })
			tb.Close()
		})
	}
}

// BenchmarkServiceAdded adds one service with 5 endpoints to n programmed
// ones per sync, through Update as the controller does (the bar: flat
// in n).
func BenchmarkServiceAdded(b *testing.B) {
	for _, n := range scales {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			tb := benchTable(b)
			all := manyServices(n+b.N, 5)
			if _, err := tb.Sync(all[:n]); err != nil {
				b.Fatal(err)
			}
			measure(b, func(int) {}, func() (Stats, error) {
				n++
				return tb.Update(all[n-1:n], nil)
			})
		})
	}
}

// BenchmarkEndpointChanged replaces one endpoint of one of n services per
// sync, through Update.
func BenchmarkEndpointChanged(b *testing.B) {
	for _, n := range scales {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			tb := benchTable(b)
			svcs := manyServices(n, 5)
			if _, err := tb.Sync(svcs); err != nil {
				b.Fatal(err)
			}
			var s *Service
			measure(b, func(i int) {
				s = &svcs[(i*7919)%n]
				s.Internal[2] = Endpoint{Addr: netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)}), Port: 8080}
				s.External = s.Internal
			}, func() (Stats, error) { return tb.Update([]Service{*s}, nil) })
		})
	}
}

// BenchmarkConnect times TCP connects from a pod through a ClusterIP to
// another pod of its node, on two nodes side by side: one whose table
// holds 10 services, one with 10,000 (× 5 endpoints). Each iteration
// makes 20 connects on one node, then 20 on the other (-benchtime 100x):
// both see the machine in the same state, so the ratio is the table's
// size alone (the bar: connect latency at 10k within 5 % of at 10).
func BenchmarkConnect(b *testing.B) {
	const connects = 20
	type node struct {
		client *pod
		to     netip.AddrPort
		times  []time.Duration
	}
	var nodes []*node
	for _, n := range []int{10, 10000} {
		l := newLab(b, 2)
		tb, err := New(Config{NetNSFd: l.node.Fd(), ClusterCIDRs: clusterCIDRs})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tb.Close() })
		svcs := manyServices(n, 5)
		// svcs[0] is the one connected to: its endpoint is the lab's
		// first pod.
		svcs[0].Internal, svcs[0].External = []Endpoint{{Addr: l.pods[0].ip4, Port: tcpPort}}, nil
		if _, err := tb.Sync(svcs); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, &node{client: l.pods[1], to: netip.AddrPortFrom(svcs[0].ClusterIP, svcs[0].Port)})
	}
	// The kernel frees and rehashes after a large change in the
	// background: let it finish before timing.
	time.Sleep(2 * time.Second)
	d := &net.Dialer{Timeout: 3 * time.Second}
	b.ResetTimer()
	for range b.N {
		for _, nd := range nodes {
			err := nd.client.ns.Do(func() error {
				for range connects {
					start := time.Now()
					c, err := d.Dial("tcp", nd.to.String())
					took := time.Since(start)
					if err != nil {
						return fmt.Errorf("connect %v: %w", nd.to, err)
					}
					c.Close()
					nd.times = append(nd.times, took)
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	p50 := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2].Nanoseconds()) / 1e3
	}
	at10, at10k := p50(nodes[0].times), p50(nodes[1].times)
	b.ReportMetric(at10, "p50-µs@10")
	b.ReportMetric(at10k, "p50-µs@10k")
	b.ReportMetric(at10k/at10, "10k/10")
}
