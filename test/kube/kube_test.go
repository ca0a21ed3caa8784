package kube

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// step is one check of TestKubernetes.
type step struct {
	name    string
	timeout time.Duration
	run     func(t *testing.T, ctx context.Context, c *cluster)
}

// TestKubernetes runs every check on one cluster, in order: those that
// only look first, then those that change the cluster (churn, faults),
// the uninstall, which takes the pod network down, last.
func TestKubernetes(t *testing.T) {
	c := upCluster(t)
	steps := []step{
		{"Nodes", time.Minute, testNodes},
		{"PodCIDRs", time.Minute, testPodCIDRs},
		{"APIServerToPods", time.Minute, testAPIServerToPods},
		{"HostPort", 2 * time.Minute, testHostPort},
		{"Bandwidth", 2 * time.Minute, testBandwidth},
		{"Services", 2 * time.Minute, testServices},
		{"ServiceProxy", 12 * time.Minute, testServiceProxy},
		{"NetworkPolicy", 8 * time.Minute, testNetworkPolicy},
		{"Churn", 6 * time.Minute, testChurn},
		{"AgentRestart", 2 * time.Minute, testAgentRestart},
		{"APIServerOutage", 3 * time.Minute, testAPIServerOutage},
		{"NodeDeleted", 2 * time.Minute, testNodeDeleted},
		{"Uninstall", 3 * time.Minute, testUninstall},
	}
	var timings []string
	t.Cleanup(func() { t.Logf("timing: %s", strings.Join(timings, ", ")) })
	for _, s := range steps {
		start := time.Now()
		t.Run(s.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			defer cancel()
			s.run(t, ctx, c)
		})
		timings = append(timings, fmt.Sprintf("%s %s", s.name, time.Since(start).Round(time.Millisecond)))
	}
}
