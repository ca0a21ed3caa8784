// Command coredns is CoreDNS with the plugins the test cluster's DNS
// needs (the kubernetes plugin answering for Services and pods, with
// errors, health, ready, cache, loadbalance, log and metrics), built from
// upstream CoreDNS by internal/kube for the conformance run's kube-dns.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
