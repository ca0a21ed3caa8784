package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/netns"
)

// histo is a histogram's observation count and sum (seconds), summed
// over the series a metric selects.
type histo struct {
	Count uint64  `json:"count"`
	Sum   float64 `json:"sumSeconds"`
}

// mean is the mean observation.
func (h histo) mean() time.Duration {
	if h.Count == 0 {
		return 0
	}
	return time.Duration(h.Sum / float64(h.Count) * float64(time.Second))
}

// metric selects the series of a histogram: a component's family (by
// name, or name with containerd's doubled "_seconds") and a label value.
type metric struct {
	ID          string
	Component   string // "kubelet" or "containerd"
	Family      string
	Label, Want string // label filter, none when empty
	What        string
}

// metrics are the histograms taken around every round.
var metrics = []metric{
	{"kubelet.run_podsandbox", "kubelet", "kubelet_runtime_operations_duration_seconds", "operation_type", "run_podsandbox", "kubelet → RunPodSandbox"},
	{"kubelet.create_container", "kubelet", "kubelet_runtime_operations_duration_seconds", "operation_type", "create_container", "kubelet → CreateContainer"},
	{"kubelet.start_container", "kubelet", "kubelet_runtime_operations_duration_seconds", "operation_type", "start_container", "kubelet → StartContainer"},
	{"kubelet.pod_start_sli", "kubelet", "kubelet_pod_start_sli_duration_seconds", "", "", "kubelet: pod created → watched running (its startup SLI)"},
	{"containerd.sandbox_network", "containerd", "containerd_cri_sandbox_create_network", "", "", "containerd: sandbox network (netns + CNI ADD)"},
	{"containerd.cni_add", "containerd", "containerd_cri_network_plugin_operations_duration_seconds", "operation_type", "set_up_pod", "containerd: CNI ADD"},
	{"containerd.sandbox_runtime", "containerd", "containerd_cri_sandbox_runtime_create", "", "", "containerd: RunPodSandbox, all of it (sandbox_runtime_create)"},
	{"containerd.cni_del", "containerd", "containerd_cri_network_plugin_operations_duration_seconds", "operation_type", "tear_down_pod", "containerd: CNI DEL"},
	{"containerd.sandbox_network_delete", "containerd", "containerd_cri_sandbox_delete_network", "", "", "containerd: sandbox network teardown"},
}

// errorCounts are the counters of failed operations taken around every
// round (Count is the failures).
var errorCounts = []metric{
	{"containerd.cni_add_errors", "containerd", "containerd_cri_network_plugin_operations_errors_total", "operation_type", "set_up_pod", "containerd: CNI ADD failures"},
	{"containerd.cni_del_errors", "containerd", "containerd_cri_network_plugin_operations_errors_total", "operation_type", "tear_down_pod", "containerd: CNI DEL failures"},
	{"kubelet.runtime_errors", "kubelet", "kubelet_runtime_operations_errors_total", "", "", "kubelet: failed runtime operations"},
}

// scrape reads the metrics of node's kubelet (through the API server's
// node proxy) and containerd (on the node's loopback).
func (b *bench) scrape(ctx context.Context, node string) (map[string]histo, error) {
	kubelet, err := b.c.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", node, "proxy", "metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("kubelet metrics of %s: %w", node, err)
	}
	containerd, err := b.containerdMetrics(ctx, node)
	if err != nil {
		return nil, fmt.Errorf("containerd metrics of %s: %w", node, err)
	}
	out := map[string]histo{}
	for comp, text := range map[string][]byte{"kubelet": kubelet, "containerd": containerd} {
		fams, err := parseMetrics(text)
		if err != nil {
			return nil, fmt.Errorf("%s metrics of %s: %w", comp, node, err)
		}
		for _, m := range append(slices.Clone(metrics), errorCounts...) {
			if m.Component == comp {
				out[m.ID] = m.sum(fams)
			}
		}
	}
	return out, nil
}

func parseMetrics(text []byte) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(bytes.NewReader(text))
}

// sum adds up the histograms (or the counters, as Count) m selects.
func (m metric) sum(fams map[string]*dto.MetricFamily) histo {
	var h histo
	for _, name := range []string{m.Family, m.Family + "_seconds"} {
		f := fams[name]
		if f == nil {
			continue
		}
		for _, s := range f.GetMetric() {
			if m.Label != "" && !hasLabel(s, m.Label, m.Want) {
				continue
			}
			if hg := s.GetHistogram(); hg != nil {
				h.Count += hg.GetSampleCount()
				h.Sum += hg.GetSampleSum()
			}
			if c := s.GetCounter(); c != nil {
				h.Count += uint64(c.GetValue())
			}
		}
	}
	return h
}

func hasLabel(s *dto.Metric, name, value string) bool {
	for _, l := range s.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

// diff is after − before, per metric.
func diff(before, after map[string]histo) map[string]histo {
	out := map[string]histo{}
	for id, a := range after {
		b := before[id]
		out[id] = histo{Count: a.Count - b.Count, Sum: a.Sum - b.Sum}
	}
	return out
}

// containerdMetrics fetches the node's containerd metrics from inside its
// network namespace.
func (b *bench) containerdMetrics(ctx context.Context, node string) ([]byte, error) {
	var nsName string
	for _, n := range b.l.Nodes {
		if n.Name == node {
			nsName = n.NS
		}
	}
	if nsName == "" {
		return nil, fmt.Errorf("no node %s in the lab", node)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ns, err := netns.OpenNamed(nsName)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		var c net.Conn
		err = ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}, Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+kube.ContainerdMetricsAddress+"/v1/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return body, nil
}
