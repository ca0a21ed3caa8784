// Package benchdoc is what podnet's benchmarks share to publish their
// figures: the machine they ran on, order statistics, the bar verdict, a
// Markdown section of docs/performance.md replaced in place (other
// sections are left as they are) and a JSON file beside it.
package benchdoc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Machine describes where a benchmark ran.
type Machine struct {
	Host   string            `json:"host"`
	CPU    string            `json:"cpu"`
	CPUs   int               `json:"cpus"`
	Kernel string            `json:"kernel"`
	OS     string            `json:"os"`
	Go     string            `json:"go"`
	Tools  map[string]string `json:"tools,omitempty"`
	Date   time.Time         `json:"date"`
}

// ThisMachine describes the running machine; tools names programs whose
// version (first line of `tool --version`) goes into the description.
func ThisMachine(tools ...string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Date: time.Now().UTC(), Tools: map[string]string{}}
	m.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	for _, t := range tools {
		out, err := exec.Command(t, "--version").CombinedOutput()
		if err != nil {
			continue
		}
		m.Tools[t] = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	return m
}

// String is the machine in one line.
func (m Machine) String() string {
	s := fmt.Sprintf("%s, %s ×%d CPUs, kernel %s, %s, %s", m.Host, m.CPU, m.CPUs, m.Kernel, m.OS, m.Go)
	var tools []string
	for _, v := range m.Tools {
		tools = append(tools, v)
	}
	sort.Strings(tools)
	if len(tools) > 0 {
		s += ", " + strings.Join(tools, ", ")
	}
	return s + "; " + m.Date.Format("2006-01-02 15:04 MST")
}

// LoadAverage is the machine's 1-minute load average ("unknown" when
// unreadable): benchmarks measure ratios in one run, but other load
// makes them noisier.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(b))[0]
}

// Median is the middle value (the mean of the two middle ones for an even
// count); 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Percentile is the nearest-rank p-quantile (0 < p ≤ 1) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Verdict is "meets" or "misses".
func Verdict(ok bool) string {
	if ok {
		return "meets"
	}
	return "misses"
}

// markers delimit a benchmark's section in a shared Markdown file.
func markers(id string) (begin, end string) {
	return "<!-- begin " + id + " (generated; replaced by the next run) -->", "<!-- end " + id + " -->"
}

// WriteSection puts body into path as the section named id: in place of
// that section when the file has it, appended otherwise (the file is
// created when missing). Everything else in the file is kept as it is.
func WriteSection(path, id, body string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	begin, end := markers(id)
	section := begin + "\n" + strings.TrimRight(body, "\n") + "\n" + end + "\n"
	var out bytes.Buffer
	i, j := bytes.Index(old, []byte(begin)), bytes.Index(old, []byte(end))
	switch {
	case i >= 0 && j > i:
		out.Write(old[:i])
		out.WriteString(section)
		rest := old[j+len(end):]
		out.Write(bytes.TrimPrefix(rest, []byte("\n")))
	default:
		out.Write(old)
		if len(old) > 0 && !bytes.HasSuffix(old, []byte("\n\n")) {
			if !bytes.HasSuffix(old, []byte("\n")) {
				out.WriteByte('\n')
			}
			out.WriteByte('\n')
		}
		out.WriteString(section)
	}
	return writeAtomic(path, out.Bytes())
}

// WriteJSON writes v, indented, to path.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, append(b, '\n'))
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Output is where a benchmark publishes its report: its section of a
// Markdown file and its figures as a JSON file, each optional.
type Output struct {
	MD, JSON string
}

// Flags registers -md and -json on the default flag set.
func (o *Output) Flags() {
	flag.StringVar(&o.MD, "md", "", "write the report as a section of this Markdown file (other sections are kept)")
	flag.StringVar(&o.JSON, "json", "", "write the figures as JSON to this file")
}

// Publish writes section as the benchmark id's section of o.MD and v as
// JSON to o.JSON, each when set.
func (o Output) Publish(id, section string, v any) error {
	if o.MD != "" {
		if err := WriteSection(o.MD, id, section); err != nil {
			return err
		}
	}
	if o.JSON != "" {
		return WriteJSON(o.JSON, v)
	}
	return nil
}

// Main runs the benchmark called name after its flags are parsed: run's
// context ends on SIGINT or SIGTERM; an error is printed and exits 1.
func Main(name string, run func(context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// ParseScales parses a -scales flag: comma-separated counts of what (for
// the error) in lo…hi, returned sorted without repeats.
func ParseScales(s, what string, lo, hi int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("-scales: %q is not a number of %s in %d…%d", f, what, lo, hi)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
