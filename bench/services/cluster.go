package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/netns"
)

const (
	namespace   = "default"
	clusterCIDR = "10.244.0.0/16"
	serviceCIDR = "10.96.0.0/16"
	servicePort = 80
	targetPort  = 8080
	// endpointsPerService is the endpoints of every Service.
	endpointsPerService = 5
	// endpointNode is the nodeName of every endpoint: pods of another
	// node, as the EndpointSlice controller writes them in a cluster of
	// many nodes (no Node object is needed for it).
	endpointNode = "bench-elsewhere"
	// nodePortEvery: every this many Services is a NodePort Service.
	nodePortEvery = 10
	// apiWorkers create the objects in parallel.
	apiWorkers = 32
)

// cpIP is the API server's address, on the loopback link of the control
// plane's namespace; every node reaches it over its own veth pair.
var cpIP = net.IPv4(192, 0, 2, 1)

// realEndpoints are the addresses of the endpoint namespace: the
// endpoints of the Service svc-0, the one connected to.
var realEndpoints = func() []netip.Addr {
	var out []netip.Addr
	for i := range endpointsPerService {
		out = append(out, netip.AddrFrom4([4]byte{10, 244, 255, byte(i + 1)}))
	}
	return out
}()

// apiCluster is a real control plane in a throwaway namespace holding
// the benchmark's Services.
type apiCluster struct {
	ns         *netns.Temp
	cp         *kube.ControlPlane
	admin      kubernetes.Interface
	fast       kubernetes.Interface
	bins       kube.Binaries
	kubeconfig string
	// clusterIPs are the ClusterIPs of svc-0 … svc-(n-1), in order.
	clusterIPs []netip.Addr
}

func startCluster(ctx context.Context, dir string, log io.Writer) (_ *apiCluster, err error) {
	c := &apiCluster{}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.stop())
		}
	}()
	if c.bins, err = kube.Build(ctx, kube.BuildConfig{Out: log}); err != nil {
		return nil, err
	}
	if c.ns, err = netns.NewTemp("bsvc-cp"); err != nil {
		return nil, err
	}
	if err := c.ns.AddLoopbackAddr(netip.AddrFrom4([4]byte(cpIP.To4()))); err != nil {
		return nil, fmt.Errorf("api address: %w", err)
	}
	c.cp, err = kube.StartControlPlane(ctx, kube.ControlPlaneConfig{
		Bins: c.bins, Dir: dir, NetNS: c.ns.Path(), IP: cpIP,
		ClusterCIDR: clusterCIDR, NodeCIDRMaskSize: 24, ServiceCIDR: serviceCIDR,
	})
	if err != nil {
		return nil, err
	}
	if c.admin, err = c.cp.Client(); err != nil {
		return nil, err
	}
	rc := c.cp.RESTConfig()
	rc.QPS, rc.Burst = 2000, 4000
	if c.fast, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c.kubeconfig = c.cp.AdminKubeconfig()
	return c, nil
}

func (c *apiCluster) stop() error {
	var err error
	if c.cp != nil {
		err = c.cp.Stop()
	}
	if c.ns != nil {
		err = errors.Join(err, c.ns.Remove())
	}
	return err
}

// serviceName is the name of the i-th Service.
func serviceName(i int) string { return "svc-" + strconv.Itoa(i) }

// endpointsOf are the endpoint addresses of the i-th Service: svc-0's are
// the endpoint namespace's, the others' are nowhere (no traffic goes to
// them).
func endpointsOf(i int) []netip.Addr {
	if i == 0 {
		return realEndpoints
	}
	var out []netip.Addr
	for j := range endpointsPerService {
		out = append(out, netip.AddrFrom4([4]byte{10, 244, byte(i / 50 % 250), byte(i%50*endpointsPerService + j + 1)}))
	}
	return out
}

// grow creates Services (with their EndpointSlices) until the API holds
// n of them.
func (c *apiCluster) grow(ctx context.Context, n int) error {
	from := len(c.clusterIPs)
	if n <= from {
		return nil
	}
	ips := make([]netip.Addr, n-from)
	jobs := make(chan int)
	errc := make(chan error, apiWorkers)
	var wg sync.WaitGroup
	for range apiWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				name := serviceName(i)
				err := c.createSlice(ctx, name, endpointsOf(i))
				var ip netip.Addr
				if err == nil {
					ip, err = c.createService(ctx, name, i%nodePortEvery == nodePortEvery-1)
				}
				if err != nil {
					errc <- err
					return
				}
				ips[i-from] = ip
			}
		}()
	}
feed:
	for i := from; i < n; i++ {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		case err := <-errc:
			close(jobs)
			wg.Wait()
			return err
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c.clusterIPs = append(c.clusterIPs, ips...)
	return nil
}

// createService creates the Service name (selector-less, TCP port 80 →
// 8080, a NodePort Service when nodePort) and returns its ClusterIP. Its
// EndpointSlice is created first (createSlice), so the Service is
// complete as soon as it exists.
func (c *apiCluster) createService(ctx context.Context, name string, nodePort bool) (netip.Addr, error) {
	typ := corev1.ServiceTypeClusterIP
	if nodePort {
		typ = corev1.ServiceTypeNodePort
	}
	svc, err := c.fast.CoreV1().Services(namespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Type: typ, Ports: []corev1.ServicePort{{
			Name: "http", Protocol: corev1.ProtocolTCP, Port: servicePort,
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %s: %w", name, err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %s: ClusterIP %q: %w", name, svc.Spec.ClusterIP, err)
	}
	return ip, nil
}

// sliceOf is the EndpointSlice of the Service name.
func sliceOf(name string, eps []netip.Addr) *discoveryv1.EndpointSlice {
	ready := true
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "bench-services",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(targetPort))}},
	}
	for _, ep := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{ep.String()}, NodeName: ptr(endpointNode), Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		})
	}
	return s
}

// createSlice creates the EndpointSlice of the Service name: eps, all
// ready, on targetPort.
func (c *apiCluster) createSlice(ctx context.Context, name string, eps []netip.Addr) error {
	if _, err := c.fast.DiscoveryV1().EndpointSlices(namespace).Create(ctx, sliceOf(name, eps), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("endpointslice %s: %w", name, err)
	}
	return nil
}

// replaceEndpoint sets the endpoints of the Service name's slice to eps.
func (c *apiCluster) replaceEndpoint(ctx context.Context, name string, eps []netip.Addr) error {
	if _, err := c.fast.DiscoveryV1().EndpointSlices(namespace).Update(ctx, sliceOf(name, eps), metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("endpointslice %s: %w", name, err)
	}
	return nil
}

// deleteService deletes the Service name and its slice.
func (c *apiCluster) deleteService(ctx context.Context, name string) error {
	if err := c.fast.CoreV1().Services(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete service %s: %w", name, err)
	}
	if err := c.fast.DiscoveryV1().EndpointSlices(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete endpointslice %s: %w", name, err)
	}
	return nil
}

// createNode creates the Node name with its InternalIP, as kube-proxy
// reads its node's addresses from it.
func (c *apiCluster) createNode(ctx context.Context, name string, ip net.IP) error {
	nodes := c.admin.CoreV1().Nodes()
	if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("node %s: %w", name, err)
	}
	// The control plane's controllers update the new Node too.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}, {Type: corev1.NodeHostName, Address: name}}
		_, err = nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("node %s status: %w", name, err)
	}
	return nil
}

func (c *apiCluster) deleteNode(ctx context.Context, name string) error {
	if err := c.admin.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }
