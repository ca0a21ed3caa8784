// Command proxy runs podnet's service proxy (package services, the code
// podnet-agent runs with --service-proxy) alone, as its own process, for
// bench/services: started inside a node's network namespace, it follows
// the API through -kubeconfig and serves its metrics at -metrics, so the
// benchmark measures its CPU and memory as it does kube-proxy's.
//
//	proxy -kubeconfig FILE -node NAME -underlay eth0 -underlay-ip IP [-cluster-cidr CIDR] [-metrics ADDR]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/services"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server")
	node := flag.String("node", "", "this node's name")
	underlay := flag.String("underlay", "eth0", "the node's underlay interface")
	underlayIP := flag.String("underlay-ip", "", "the node's underlay address")
	clusterCIDR := flag.String("cluster-cidr", "10.244.0.0/16", "the cluster's pod network")
	metricsAddr := flag.String("metrics", "127.0.0.1:10249", "where /metrics is served")
	resync := flag.Duration("resync", 30*time.Second, "full resync period (kube-proxy's syncPeriod)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *kubeconfig, *node, *underlay, *underlayIP, *clusterCIDR, *metricsAddr, *resync); err != nil {
		fmt.Fprintln(os.Stderr, "proxy:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, kubeconfig, node, underlay, underlayIP, clusterCIDR, metricsAddr string, resync time.Duration) error {
	if kubeconfig == "" || node == "" {
		return errors.New("needs -kubeconfig and -node")
	}
	ip := net.ParseIP(underlayIP)
	if ip == nil {
		return fmt.Errorf("-underlay-ip %q: not an IP address", underlayIP)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	reg := prometheus.NewRegistry()
	env := controller.NewEnv()
	env.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	env.Metrics, env.NodeName, env.Resync = reg, node, resync
	env.Underlay = controller.Underlay{Name: underlay, IP: ip}
	env.Cluster = cluster.Config{ClusterCIDR: clusterCIDR}
	ln, err := net.Listen("tcp", metricsAddr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	return services.New(env, client, services.Config{Enabled: true}).Run(ctx, &controller.Health{})
}
