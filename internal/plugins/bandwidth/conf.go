// Package bandwidth is the bandwidth plugin: a chained plugin that limits
// a pod's traffic with token bucket filters, as the reference bandwidth
// plugin does — traffic to the pod (ingress) by a tbf on the host end of
// its veth, traffic from the pod (egress) by redirecting what the host end
// receives to an ifb device that carries a tbf. Everything goes through
// netlink; the ifb is named after and stamped with the attachment
// identity, so DEL and GC find it without the pod's namespace.
package bandwidth

import (
	"math"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/cniplugin"
)

// Limits are the rates (bits per second) and bursts (bits) of the
// reference's bandwidth entry; a zero rate means no limit in that
// direction, a zero (or NoBurst) burst the default one.
type Limits struct {
	IngressRate  uint64 `json:"ingressRate"`
	IngressBurst uint64 `json:"ingressBurst"`
	EgressRate   uint64 `json:"egressRate"`
	EgressBurst  uint64 `json:"egressBurst"`
	// UnshapedSubnets and ShapedSubnets come from newer reference
	// versions, which shape with htb classes; podnet's tbf shaping applies
	// to all traffic and refuses them rather than ignore them.
	UnshapedSubnets []string `json:"unshapedSubnets,omitempty"`
	ShapedSubnets   []string `json:"shapedSubnets,omitempty"`
}

// Conf is the bandwidth plugin's configuration: the limits at the top
// level, or the "bandwidth" capability in runtimeConfig (as containerd and
// CRI-O send the kubernetes.io/{ingress,egress}-bandwidth annotations).
type Conf struct {
	cniplugin.NetConf
	*Limits
	RuntimeConfig struct {
		Bandwidth *Limits `json:"bandwidth,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// latencyUsec is how long a packet may wait in a tbf queue: the limit of
// the queue is the burst plus what the rate sends in that time (the
// reference's 25 ms).
const latencyUsec = 25_000

// Effective returns the limits in force. As in the reference, limits
// written in the configuration itself take precedence; otherwise the
// runtime's bandwidth capability applies. nil means no limits.
func (c *Conf) Effective() *Limits {
	if c.Limits != nil {
		return c.Limits
	}
	return c.RuntimeConfig.Bandwidth
}

// shaping is one direction's token bucket in the kernel's units.
type shaping struct {
	rate   uint64 // bytes per second
	burst  uint32 // bytes
	buffer uint32 // ticks to send burst at rate
	limit  uint32 // bytes queued at most
}

// tbf is the qdisc of a shaping on a link, as root with handle 1:.
func (s shaping) tbf(linkIndex int) *netlink.Tbf {
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: linkIndex,
			Handle:    netlink.MakeHandle(1, 0),
			Parent:    netlink.HANDLE_ROOT,
		},
		Rate:   s.rate,
		Buffer: s.buffer,
		Limit:  s.limit,
	}
}

// shapingOf validates one direction and converts it; ok is false when the
// direction is unlimited. A rate without a burst, or with the burst
// containerd sends for "none given" (NoBurst), gets
// DefaultBurst; a burst without a rate is invalid, as in the reference.
func shapingOf(dir string, rateBits, burstBits uint64) (s shaping, ok bool, err error) {
	switch {
	case rateBits == 0 && burstBits == 0:
		return shaping{}, false, nil
	case rateBits == 0:
		return shaping{}, false, cniplugin.Invalid("%sBurst is set, so %sRate must also be set", dir, dir)
	case burstBits/8 >= math.MaxUint32:
		return shaping{}, false, cniplugin.Invalid("%sBurst cannot be more than 4GB", dir)
	case rateBits < 8:
		return shaping{}, false, cniplugin.Invalid("%sRate %d is below one byte per second", dir, rateBits)
	}
	s.rate = rateBits / 8
	if burstBits == 0 || burstBits == NoBurst {
		s.burst = DefaultBurst(s.rate)
	} else {
		s.burst = min(uint32(burstBits/8), maxBurst(s.rate))
	}
	s.buffer = netlink.Xmittime(s.rate, s.burst)
	queued := float64(s.rate)*latencyUsec/netlink.TIME_UNITS_PER_SEC + float64(s.burst)
	if queued >= math.MaxUint32 {
		return shaping{}, false, cniplugin.Invalid("%sRate %d bits/s queues more than 4GB in %d ms", dir, rateBits, latencyUsec/1000)
	}
	s.limit = uint32(queued)
	return s, true, nil
}

// NoBurst is the burst (bits) containerd sends with the
// kubernetes.io/{ingress,egress}-bandwidth annotations, which carry no
// burst: math.MaxUint32, its "none given".
const NoBurst = math.MaxUint32

// The default burst: burstTime of traffic at the rate, and at least
// minBurst.
const (
	burstTime = 5 * time.Millisecond
	// minBurst is the largest packet the stack hands a qdisc (a 64 KiB
	// GSO packet, far above any MTU in use): tbf then never has to split
	// a packet, nor drop one larger than its bucket.
	minBurst = 64 << 10
)

// DefaultBurst is the burst (bytes) of a limit given without one:
// max(rate × 5 ms, 64 KiB). A few milliseconds of the rate keep the
// average at the rate — a 10 MiB transfer at 8 Mbit/s takes about 10 s —
// while a bucket of one full-sized packet at least lets every packet
// through.
func DefaultBurst(rate uint64) uint32 {
	b := max(float64(rate)*burstTime.Seconds(), minBurst)
	return uint32(min(b, float64(maxBurst(rate))))
}

// maxBurst is the largest burst (bytes) the kernel's token bucket can
// time at rate (bytes per second): tbf holds the time to send the burst
// in a 32-bit count of scheduler ticks, about 275 s on most kernels. A
// longer burst is cut to it rather than refused (the reference lets the
// buffer wrap around to whatever its low 32 bits say).
func maxBurst(rate uint64) uint32 {
	usec := float64(math.MaxUint32-1) / max(1, netlink.TickInUsec())
	return uint32(min(math.MaxUint32-1, usec/netlink.TIME_UNITS_PER_SEC*float64(rate)))
}

// Plan is what a pod's limits ask of the kernel: a token bucket for
// each limited direction.
type Plan struct {
	ingress, egress       shaping
	hasIngress, hasEgress bool
}

// None tells whether nothing is to be shaped.
func (p Plan) None() bool { return !p.hasIngress && !p.hasEgress }

// PlanOf validates limits (nil: none) and converts them to a plan; every
// failure is error 7.
func PlanOf(l *Limits) (Plan, error) {
	var p Plan
	if l == nil {
		return p, nil
	}
	if len(l.UnshapedSubnets) > 0 || len(l.ShapedSubnets) > 0 {
		return p, cniplugin.Invalid("unshapedSubnets and shapedSubnets are not supported: podnet shapes all of a pod's traffic")
	}
	var err error
	if p.ingress, p.hasIngress, err = shapingOf("ingress", l.IngressRate, l.IngressBurst); err != nil {
		return p, err
	}
	if p.egress, p.hasEgress, err = shapingOf("egress", l.EgressRate, l.EgressBurst); err != nil {
		return p, err
	}
	return p, nil
}

// decode reads the configuration without judging the limits (DEL and GC).
func decode(data []byte) (*Conf, error) { return cniplugin.DecodeNew[Conf](data) }

// load reads the configuration and validates the limits in force.
func load(data []byte) (*Conf, Plan, error) {
	c, err := decode(data)
	if err != nil {
		return nil, Plan{}, err
	}
	p, err := PlanOf(c.Effective())
	return c, p, err
}
