package portmap

import (
	"fmt"
	"net"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/nft/podrules"
)

// DefaultMarkBit is the reference's default masquerade mark bit
// (Kubernetes uses 14 and 15, Calico 20-31).
const DefaultMarkBit = 13

// Options are portmap's configuration fields beside the mappings. The
// podnet plugin, which honours the portMappings capability itself, reads
// the same fields.
type Options struct {
	// SNAT masquerades hairpin and localhost connections (default true).
	SNAT *bool `json:"snat,omitempty"`
	// MasqAll masquerades every forwarded connection (with SNAT).
	MasqAll bool `json:"masqAll,omitempty"`
	// MarkMasqBit is the mark bit (0-31) flagging a connection for
	// masquerading (default 13).
	MarkMasqBit *int `json:"markMasqBit"`
	// ExternalSetMarkChain names the reference's iptables chain that sets
	// somebody else's masquerade mark; see docs/plugins.md for what podnet
	// does with it.
	ExternalSetMarkChain *string `json:"externalSetMarkChain"`
	// ConditionsV4 and ConditionsV6 are extra matches on every forwarding
	// rule: iptables arguments, or nftables matches with backend nftables.
	ConditionsV4 *[]string `json:"conditionsV4"`
	ConditionsV6 *[]string `json:"conditionsV6"`
	// Backend is the reference's backend choice (iptables or nftables);
	// podnet always programs nftables, the field says how to read the
	// conditions.
	Backend *string `json:"backend,omitempty"`
}

// Conf is the reference portmap configuration.
type Conf struct {
	cniplugin.NetConf
	Options
	RuntimeConfig struct {
		PortMaps []Entry `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	fwd *Forwarding
}

// Entry is one port mapping of the portMappings capability, as
// containerd and CRI-O send it.
type Entry struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

var protocols = map[string]uint8{
	"":     unix.IPPROTO_TCP, // Kubernetes' default
	"tcp":  unix.IPPROTO_TCP,
	"udp":  unix.IPPROTO_UDP,
	"sctp": unix.IPPROTO_SCTP,
}

// load decodes and validates a configuration; every failure is a spec
// error (7 for invalid values, 2 for conditions podnet cannot express).
func load(data []byte) (*Conf, error) {
	c := &Conf{}
	if err := cniplugin.Decode(data, c); err != nil {
		return nil, err
	}
	fwd, err := c.Options.Compile(c.RuntimeConfig.PortMaps)
	if err != nil {
		return nil, err
	}
	c.fwd = fwd
	return c, nil
}

// Forwarding is the port forwarding of an attachment, validated: the
// runtime's mappings and the options in force.
type Forwarding struct {
	snat      bool
	masqAll   bool
	markBit   uint
	mappings  []podrules.PortMapping
	condV4    []expr.Any
	condV6    []expr.Any
	nftSyntax bool
}

// Compile validates the options and the runtime's mappings; every
// failure is a spec error (7 for invalid values, 2 for conditions podnet
// cannot express).
func (o Options) Compile(entries []Entry) (*Forwarding, error) {
	invalid := func(format string, a ...any) error {
		return cniplugin.Invalid(format, a...)
	}
	f := &Forwarding{snat: o.SNAT == nil || *o.SNAT, masqAll: o.MasqAll}
	if o.MarkMasqBit != nil && o.ExternalSetMarkChain != nil {
		return nil, invalid("portmap: cannot specify externalSetMarkChain and markMasqBit")
	}
	f.markBit = DefaultMarkBit
	if o.MarkMasqBit != nil {
		if *o.MarkMasqBit < 0 || *o.MarkMasqBit > 31 {
			return nil, invalid("portmap: markMasqBit must be between 0 and 31, not %d", *o.MarkMasqBit)
		}
		f.markBit = uint(*o.MarkMasqBit)
	}
	if o.ExternalSetMarkChain != nil && *o.ExternalSetMarkChain == "" {
		return nil, invalid("portmap: externalSetMarkChain is empty")
	}
	if o.Backend != nil {
		switch *o.Backend {
		case "", "iptables":
		case "nftables":
			f.nftSyntax = true
		default:
			return nil, invalid("portmap: unknown backend %q (iptables or nftables)", *o.Backend)
		}
	}
	for i, e := range entries {
		m, err := e.mapping()
		if err != nil {
			return nil, invalid("portmap: portMappings[%d]: %v", i, err)
		}
		f.mappings = append(f.mappings, m)
	}
	var err error
	if o.ConditionsV4 != nil {
		if f.condV4, err = parseConditions(*o.ConditionsV4, false, f.nftSyntax); err != nil {
			return nil, fmt.Errorf("conditionsV4: %w", err)
		}
	}
	if o.ConditionsV6 != nil {
		if f.condV6, err = parseConditions(*o.ConditionsV6, true, f.nftSyntax); err != nil {
			return nil, fmt.Errorf("conditionsV6: %w", err)
		}
	}
	return f, nil
}

// Empty tells whether there is no mapping to forward.
func (f *Forwarding) Empty() bool { return len(f.mappings) == 0 }

// mapping validates an entry.
func (e Entry) mapping() (podrules.PortMapping, error) {
	if e.HostPort < 1 || e.HostPort > 65535 {
		return podrules.PortMapping{}, fmt.Errorf("invalid host port number %d", e.HostPort)
	}
	if e.ContainerPort < 1 || e.ContainerPort > 65535 {
		return podrules.PortMapping{}, fmt.Errorf("invalid container port number %d", e.ContainerPort)
	}
	proto, ok := protocols[strings.ToLower(e.Protocol)]
	if !ok {
		return podrules.PortMapping{}, fmt.Errorf("unsupported protocol %q (tcp, udp or sctp)", e.Protocol)
	}
	m := podrules.PortMapping{HostPort: uint16(e.HostPort), ContainerPort: uint16(e.ContainerPort), Protocol: proto}
	if e.HostIP != "" {
		m.HostIP = net.ParseIP(e.HostIP)
		if m.HostIP == nil {
			return podrules.PortMapping{}, fmt.Errorf("invalid hostIP %q", e.HostIP)
		}
	}
	return m, nil
}

// portMaps returns the forwarding of the pod's first IPv4 and first IPv6
// address on its interface ifName, as the reference picks them from the
// previous result.
func (f *Forwarding) portMaps(prev *current.Result, ifName string) []podrules.PortMap {
	var v4, v6 net.IP
	for _, ip := range prev.IPs {
		is4 := ip.Address.IP.To4() != nil
		if is4 && v4 != nil || !is4 && v6 != nil {
			continue
		}
		if ip.Interface != nil {
			i := *ip.Interface
			if i >= 0 && i < len(prev.Interfaces) && (prev.Interfaces[i].Name != ifName || prev.Interfaces[i].Sandbox == "") {
				continue // a host-side interface
			}
		}
		if is4 {
			v4 = ip.Address.IP
		} else {
			v6 = ip.Address.IP
		}
	}
	var out []podrules.PortMap
	for _, ip := range []net.IP{v4, v6} {
		if ip == nil {
			continue
		}
		cond := f.condV4
		if ip.To4() == nil {
			cond = f.condV6
		}
		out = append(out, podrules.PortMap{
			ContainerIP: ip, Mappings: f.mappings, Conditions: cond,
			SNAT: f.snat, MasqAll: f.masqAll, MarkBit: f.markBit,
		})
	}
	return out
}
