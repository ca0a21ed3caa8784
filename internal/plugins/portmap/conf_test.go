package portmap

import (
	"encoding/json"
	"errors"
	"net"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

func confJSON(t *testing.T, extra map[string]any) []byte {
	t.Helper()
	m := map[string]any{"cniVersion": "1.0.0", "name": "n", "type": "portmap"}
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rc(entries ...map[string]any) map[string]any {
	l := []any{}
	for _, e := range entries {
		l = append(l, e)
	}
	return map[string]any{"portMappings": l}
}

func TestLoad(t *testing.T) {
	tcp := map[string]any{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
	cases := []struct {
		name  string
		extra map[string]any
		code  uint // 0: valid
		conds int  // expressions compiled from the conditions
	}{
		{"defaults", nil, 0, 0},
		{"mappings", map[string]any{"runtimeConfig": rc(tcp,
			map[string]any{"hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "::"},
			map[string]any{"hostPort": 1, "containerPort": 65535, "protocol": "sctp", "hostIP": "192.0.2.1"},
			map[string]any{"hostPort": 9, "containerPort": 9})}, 0, 0},
		{"snat off, masqAll, bit 0", map[string]any{"snat": false, "masqAll": true, "markMasqBit": 0}, 0, 0},
		{"externalSetMarkChain", map[string]any{"externalSetMarkChain": "KUBE-MARK-MASQ"}, 0, 0},
		{"backend nftables", map[string]any{"backend": "nftables"}, 0, 0},
		{"bad protocol", map[string]any{"runtimeConfig": rc(map[string]any{"hostPort": 1, "containerPort": 1, "protocol": "icmp"})}, 7, 0},
		{"host port 0", map[string]any{"runtimeConfig": rc(map[string]any{"hostPort": 0, "containerPort": 1})}, 7, 0},
		{"host port 65536", map[string]any{"runtimeConfig": rc(map[string]any{"hostPort": 65536, "containerPort": 1})}, 7, 0},
		{"container port -1", map[string]any{"runtimeConfig": rc(map[string]any{"hostPort": 1, "containerPort": -1})}, 7, 0},
		{"bad hostIP", map[string]any{"runtimeConfig": rc(map[string]any{"hostPort": 1, "containerPort": 1, "hostIP": "host"})}, 7, 0},
		{"port as string", map[string]any{"runtimeConfig": rc(map[string]any{"hostPort": "1", "containerPort": 1})}, 6, 0},
		{"mark bit 32", map[string]any{"markMasqBit": 32}, 7, 0},
		{"mark bit -1", map[string]any{"markMasqBit": -1}, 7, 0},
		{"mark bit and chain", map[string]any{"markMasqBit": 13, "externalSetMarkChain": "X"}, 7, 0},
		{"empty chain", map[string]any{"externalSetMarkChain": ""}, 7, 0},
		{"bad backend", map[string]any{"backend": "ebpf"}, 7, 0},
		{"no version", map[string]any{"cniVersion": ""}, 7, 0},

		// iptables conditions
		{"-d address", map[string]any{"conditionsV4": []string{"-d", "192.0.2.1"}}, 0, 2},
		{"! -s prefix, one string", map[string]any{"conditionsV4": []string{"! -s 10.0.0.0/8"}}, 0, 3},
		{"-i wildcard, -o", map[string]any{"conditionsV4": []string{"-i", "eth+", "!", "-o", "lo"}}, 0, 4},
		{"addrtype", map[string]any{"conditionsV6": []string{"-m", "addrtype", "!", "--dst-type", "LOCAL", "--src-type", "UNICAST"}}, 0, 4},
		{"comment", map[string]any{"conditionsV4": []string{"-m", "comment", "--comment", "x"}}, 0, 0},
		{"v6 prefix", map[string]any{"conditionsV6": []string{"-d", "fd00::/8"}}, 0, 3},
		{"unsupported module", map[string]any{"conditionsV4": []string{"-m", "conntrack", "--ctstate", "NEW"}}, 2, 0},
		{"unsupported option", map[string]any{"conditionsV4": []string{"-p", "tcp"}}, 2, 0},
		{"addrtype list", map[string]any{"conditionsV4": []string{"-m", "addrtype", "--dst-type", "LOCAL,UNICAST"}}, 2, 0},
		{"missing value", map[string]any{"conditionsV4": []string{"-s"}}, 7, 0},
		{"bad address", map[string]any{"conditionsV4": []string{"-s", "10.0.0.0/33"}}, 7, 0},
		{"wrong family", map[string]any{"conditionsV4": []string{"-s", "fd00::1"}}, 7, 0},
		{"dangling !", map[string]any{"conditionsV4": []string{"-s", "10.0.0.1", "!"}}, 7, 0},
		{"type without module", map[string]any{"conditionsV4": []string{"--dst-type", "LOCAL"}}, 7, 0},
		{"bad type", map[string]any{"conditionsV4": []string{"-m", "addrtype", "--dst-type", "SPECIAL"}}, 7, 0},
		{"long ifname", map[string]any{"conditionsV4": []string{"-i", "averylonginterfacename"}}, 7, 0},

		// nftables conditions
		{"nft daddr", map[string]any{"backend": "nftables", "conditionsV4": []string{"ip daddr != 10.0.0.0/8"}}, 0, 3},
		{"nft iifname, fib", map[string]any{"backend": "nftables", "conditionsV6": []string{`iifname "eth*"`, "fib", "daddr", "type", "local"}}, 0, 4},
		{"nft other family", map[string]any{"backend": "nftables", "conditionsV4": []string{"ip6 saddr fd00::1"}}, 7, 0},
		{"nft unsupported", map[string]any{"backend": "nftables", "conditionsV4": []string{"ct state new"}}, 2, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conf, err := load(confJSON(t, c.extra))
			if c.code == 0 {
				if err != nil {
					t.Fatalf("load: %v", err)
				}
				if n := len(conf.fwd.condV4) + len(conf.fwd.condV6); n != c.conds {
					t.Errorf("%d condition expressions, want %d", n, c.conds)
				}
				return
			}
			var e *types.Error
			if !errors.As(err, &e) || e.Code != c.code {
				t.Errorf("error %v, want code %d", err, c.code)
			}
		})
	}
}

func TestLoadDefaults(t *testing.T) {
	c, err := load(confJSON(t, map[string]any{"runtimeConfig": rc(map[string]any{"hostPort": 8080, "containerPort": 80})}))
	if err != nil {
		t.Fatal(err)
	}
	if f := c.fwd; !f.snat || f.markBit != DefaultMarkBit || len(f.mappings) != 1 || f.mappings[0].Protocol != 6 {
		t.Errorf("defaults: snat %v bit %d mappings %+v", f.snat, f.markBit, f.mappings)
	}
}

// TestPortMaps picks the pod's first address of each family on its own
// interface, as the reference does.
func TestPortMaps(t *testing.T) {
	idx := func(i int) *int { return &i }
	ipc := func(s string, i *int) *current.IPConfig {
		ip, n, _ := net.ParseCIDR(s)
		n.IP = ip
		return &current.IPConfig{Address: *n, Interface: i}
	}
	prev := &current.Result{
		Interfaces: []*current.Interface{{Name: "cni0"}, {Name: "veth1"}, {Name: "eth0", Sandbox: "/var/run/netns/x"}},
		IPs: []*current.IPConfig{
			ipc("10.0.0.1/24", idx(0)), // the bridge's
			ipc("10.0.0.5/24", idx(2)),
			ipc("10.0.0.6/24", idx(2)),
			ipc("fd00::5/64", nil),
		},
	}
	c, err := load(confJSON(t, map[string]any{"runtimeConfig": rc(map[string]any{"hostPort": 8080, "containerPort": 80})}))
	if err != nil {
		t.Fatal(err)
	}
	maps := c.fwd.portMaps(prev, "eth0")
	if len(maps) != 2 || maps[0].ContainerIP.String() != "10.0.0.5" || maps[1].ContainerIP.String() != "fd00::5" {
		t.Fatalf("portMaps: %+v", maps)
	}
	if maps := c.fwd.portMaps(prev, "eth1"); len(maps) != 1 || maps[0].ContainerIP.String() != "fd00::5" {
		t.Errorf("portMaps of another interface: %+v", maps)
	}
}
