package etcd

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/cluster"
)

// BenchmarkEmbeddedAgentMemory measures (it asserts nothing) the memory of
// a process playing the embedding agent of a 10-node lab: the embedded
// server, its own lease kept alive and a node watch, plus nine more nodes'
// leases and watches through a second client in the same process (an upper
// bound: those run in other agents). One iteration is a node record update
// seen by the watchers. Reported: resident set (VmRSS) and the Go runtime's
// total and heap bytes, after a GC.
func BenchmarkEmbeddedAgentMemory(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ec := testEmbed(b, filepath.Join(b.TempDir(), "etcd"), "http")
	a, err := Open(ctx, Config{Embed: ec})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	others, err := Open(ctx, Config{Endpoints: []string{ec.ClientURL}})
	if err != nil {
		b.Fatal(err)
	}
	defer others.Close()
	withConfig(b, a, cluster.Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00:10:244::/56"})
	seen := make(chan int, 1)
	var leases []*Lease
	for i := range 10 {
		s := others
		if i == 0 {
			s = a
		}
		l, err := s.Acquire(ctx, cluster.Node{Name: fmt.Sprintf("node-%d", i)}, cluster.Node{}, 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		leases = append(leases, l)
		go l.Run(ctx, nil)
		go s.WatchNodes(ctx, func(n []cluster.Node) {
			if i == 0 {
				select {
				case seen <- len(n):
				default:
				}
			}
		})
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		l := leases[i%len(leases)]
		n := l.Node()
		n.VTEPMAC = fmt.Sprintf("02:00:00:00:%02x:%02x", (i>>8)&0xff, i&0xff)
		if err := l.Update(ctx, n); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	<-seen
	runtime.GC()
	samples := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(samples)
	const mb = 1 << 20
	b.ReportMetric(float64(vmRSS(b))/mb, "RSS-MB")
	b.ReportMetric(float64(samples[0].Value.Uint64())/mb, "go-total-MB")
	b.ReportMetric(float64(samples[1].Value.Uint64())/mb, "heap-live-MB")
}

// vmRSS is this process's resident set size in bytes.
func vmRSS(b *testing.B) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}
