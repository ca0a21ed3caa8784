package cni

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// TestBridgeFeatures drives the bridge options a reference user may set
// and checks each in the kernel.
func TestBridgeFeatures(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	hostH, err := netlink.NewHandleAt(sb.Host.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer hostH.Close()

	addWith := func(t *testing.T, name string, extra sandbox.Conf, ipam sandbox.Conf, caps map[string]any) (*sandbox.Pod, error) {
		t.Helper()
		c := sandbox.Conf{"type": "bridge", "bridge": "br-" + name}
		for k, v := range extra {
			c[k] = v
		}
		if ipam != nil {
			c["ipam"] = ipam
		}
		list := mustList(t, sandbox.ConfList{Name: name, CNIVersion: "1.1.0", Plugins: []sandbox.Conf{c}})
		pod := newPod(t, sb)
		_, err := sb.Add(ctx, list, pod.RT(caps))
		return pod, err
	}
	hostPort := func(t *testing.T, bridge string) netlink.Link {
		t.Helper()
		br, err := hostH.LinkByName(bridge)
		if err != nil {
			t.Fatal(err)
		}
		links, _ := hostH.LinkList()
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				return l
			}
		}
		t.Fatalf("no port on %s", bridge)
		return nil
	}

	t.Run("vlan", func(t *testing.T) {
		if _, err := addWith(t, "vlan", sandbox.Conf{"vlan": 7, "preserveDefaultVlan": false}, nil, nil); err != nil {
			if strings.Contains(err.Error(), "CONFIG_BRIDGE_VLAN_FILTERING") {
				t.Skip("this kernel lacks bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING); the vlan options cannot be exercised here")
			}
			t.Fatal(cniruntime.Describe(err))
		}
		port := hostPort(t, "br-vlan")
		vlans, err := hostH.BridgeVlanList()
		if err != nil {
			t.Fatal(err)
		}
		var vids []uint16
		for _, v := range vlans[int32(port.Attrs().Index)] {
			vids = append(vids, v.Vid)
		}
		if len(vids) != 1 || vids[0] != 7 {
			t.Errorf("port VLANs %v, want only 7", vids)
		}
	})
	t.Run("hairpin isolation promisc", func(t *testing.T) {
		if _, err := addWith(t, "flags", sandbox.Conf{"hairpinMode": true, "portIsolation": true}, nil, nil); err != nil {
			t.Fatal(cniruntime.Describe(err))
		}
		port := hostPort(t, "br-flags")
		pi, err := hostH.LinkGetProtinfo(port)
		if err != nil {
			t.Fatal(err)
		}
		if !pi.Hairpin || !pi.Isolated {
			t.Errorf("protinfo hairpin=%v isolated=%v", pi.Hairpin, pi.Isolated)
		}
		if _, err := addWith(t, "promisc", sandbox.Conf{"promiscMode": true}, nil, nil); err != nil {
			t.Fatal(cniruntime.Describe(err))
		}
		br, _ := hostH.LinkByName("br-promisc")
		if br.Attrs().Promisc == 0 {
			t.Error("bridge is not promiscuous")
		}
	})
	t.Run("layer 2 only and disabled interface", func(t *testing.T) {
		pod, err := addWith(t, "l2", nil, nil, nil)
		if err != nil {
			t.Fatal(cniruntime.Describe(err))
		}
		links, _ := sandbox.Links(pod.NS.NS)
		if l, ok := sandbox.FindLink(links, "eth0"); !ok || !l.Up || len(l.Addrs) != 0 {
			t.Errorf("L2 pod interface: %+v", l)
		}
		pod, err = addWith(t, "down", sandbox.Conf{"disableContainerInterface": true}, nil, nil)
		if err != nil {
			t.Fatal(cniruntime.Describe(err))
		}
		links, _ = sandbox.Links(pod.NS.NS)
		if l, ok := sandbox.FindLink(links, "eth0"); !ok || l.Up {
			t.Errorf("disabled pod interface: %+v", l)
		}
	})
	t.Run("mac capability", func(t *testing.T) {
		pod, err := addWith(t, "mac", sandbox.Conf{"capabilities": map[string]bool{"mac": true}}, nil, map[string]any{"mac": "0a:58:0a:0b:0c:0d"})
		if err != nil {
			t.Fatal(cniruntime.Describe(err))
		}
		links, _ := sandbox.Links(pod.NS.NS)
		if l, _ := sandbox.FindLink(links, "eth0"); l.MAC != "0a:58:0a:0b:0c:0d" {
			t.Errorf("MAC %s", l.MAC)
		}
	})
	t.Run("forceAddress", func(t *testing.T) {
		dir := sb.DataDir("force")
		if _, err := addWith(t, "force", sandbox.Conf{"isGateway": true}, sandbox.HostLocal("10.60.0.0/24", dir), nil); err != nil {
			t.Fatal(cniruntime.Describe(err))
		}
		// Another network on the same bridge with another gateway.
		other := sandbox.Conf{"isGateway": true, "bridge": "br-force"}
		if _, err := addWith(t, "force2", other, sandbox.HostLocal("10.61.0.0/24", dir), nil); err == nil {
			t.Error("a second IPv4 gateway on the bridge was accepted without forceAddress")
		}
		other["forceAddress"] = true
		if _, err := addWith(t, "force3", other, sandbox.HostLocal("10.62.0.0/24", dir), nil); err != nil {
			t.Fatal(cniruntime.Describe(err))
		}
		br, _ := hostH.LinkByName("br-force")
		addrs, _ := hostH.AddrList(br, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.62.0.1/24" {
			t.Errorf("bridge addresses %v", addrs)
		}
	})
	t.Run("dual stack with and without DAD", func(t *testing.T) {
		dir := sb.DataDir("v6")
		ipam := sandbox.Conf{"type": "host-local", "dataDir": dir, "ranges": []any{
			[]any{sandbox.Conf{"subnet": "10.63.0.0/24"}}, []any{sandbox.Conf{"subnet": "fd00:63::/64"}},
		}}
		for _, dad := range []bool{false, true} {
			start := time.Now()
			pod, err := addWith(t, map[bool]string{false: "nodad", true: "dad"}[dad], sandbox.Conf{"isGateway": true, "enabledad": dad}, ipam, nil)
			if err != nil {
				t.Fatal(cniruntime.Describe(err))
			}
			elapsed := time.Since(start)
			h, _ := netlink.NewHandleAt(pod.NS.Handle(), unix.NETLINK_ROUTE)
			eth0, _ := h.LinkByName("eth0")
			addrs, _ := h.AddrList(eth0, netlink.FAMILY_V6)
			h.Close()
			for _, a := range addrs {
				if a.IP.IsGlobalUnicast() && a.Flags&unix.IFA_F_TENTATIVE != 0 {
					t.Errorf("enabledad=%v: %s still tentative after ADD", dad, a.IPNet)
				}
			}
			t.Logf("enabledad=%v: ADD took %s", dad, elapsed)
		}
	})
	t.Run("pods talk across the bridge", func(t *testing.T) {
		dir := sb.DataDir("talk")
		var pods []*sandbox.Pod
		for i := 0; i < 2; i++ {
			p, err := addWith(t, "talk", sandbox.Conf{"isGateway": true, "ipMasq": true, "macspoofchk": true}, sandbox.HostLocal("10.64.0.0/24", dir), nil)
			if err != nil {
				t.Fatal(cniruntime.Describe(err))
			}
			pods = append(pods, p)
		}
		links, _ := sandbox.Links(pods[1].NS.NS)
		l, _ := sandbox.FindLink(links, "eth0")
		if len(l.Addrs) == 0 {
			t.Fatal("second pod has no address")
		}
		ln, err := sandbox.Listen(pods[1].NS.NS, net.JoinHostPort(l.Addrs[0].IP.String(), "7000"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go sandbox.Echo(ln)
		got, err := sandbox.RoundTrip(pods[0].NS.NS, ln.Addr().String(), "hello")
		if err != nil || !strings.Contains(got, "hello") {
			t.Fatalf("pod to pod: %q %v", got, err)
		}
		rules, _ := sandbox.Ruleset(sb.Host.NS)
		if !strings.Contains(rules, "masquerade") || !strings.Contains(rules, "ether saddr !=") {
			t.Errorf("host ruleset lacks masquerade or spoof check:\n%s", rules)
		}
	})
}
