// Package benchlab holds what the benchmarks that run a lab share: the
// lab's binaries, a fresh lab name, and waiting for a quiet machine.
package benchlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/podnet/podnet/internal/lab"
)

// Binaries returns bins with each path given made absolute (the lab runs
// them from other directories); it fails when one does not exist.
func Binaries(bins lab.Binaries) (lab.Binaries, error) {
	for _, p := range []*string{&bins.Agent, &bins.CNI, &bins.CLI} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return bins, err
		}
		if _, err := os.Stat(abs); err != nil {
			return bins, fmt.Errorf("%w (make build makes it)", err)
		}
		*p = abs
	}
	return bins, nil
}

// Name is a fresh lab name: prefix, a dash and six random hex digits.
func Name(prefix string) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// Pause waits d, or until ctx ends (its error then).
func Pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Quiet waits until the machine's CPUs were idle at least the fraction
// idle of the last second (read from /proc/stat), two seconds in a row,
// or until max has passed. It returns how long it waited and whether the
// machine became quiet: a measurement after filling an API server
// otherwise runs beside the server's own digestion of the objects.
func Quiet(ctx context.Context, idle float64, max time.Duration) (time.Duration, bool, error) {
	start := time.Now()
	prev, err := cpuTimes()
	if err != nil {
		return 0, false, err
	}
	calm := 0
	for time.Since(start) < max {
		if err := Pause(ctx, time.Second); err != nil {
			return time.Since(start), false, err
		}
		cur, err := cpuTimes()
		if err != nil {
			return time.Since(start), false, err
		}
		if total := cur.total - prev.total; total > 0 && float64(cur.idle-prev.idle)/float64(total) >= idle {
			calm++
		} else {
			calm = 0
		}
		prev = cur
		if calm == 2 {
			return time.Since(start), true, nil
		}
	}
	return time.Since(start), false, nil
}

// cpuTime is the machine's CPU time in clock ticks since boot: idle
// (idle and iowait) and in all.
type cpuTime struct{ idle, total uint64 }

func cpuTimes() (cpuTime, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTime{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 6 || fields[0] != "cpu" {
		return cpuTime{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var t cpuTime
	// user nice system idle iowait irq softirq steal; guest time, after
	// them, is counted in user time already.
	for i, f := range fields[1:min(len(fields), 9)] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return cpuTime{}, fmt.Errorf("/proc/stat: %w", err)
		}
		t.total += v
		if i == 3 || i == 4 { // idle, iowait
			t.idle += v
		}
	}
	return t, nil
}
