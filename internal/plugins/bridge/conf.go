package bridge

import (
	"net"
	"sort"

	"github.com/podnet/podnet/internal/cniplugin"
)

const defaultBridge = "cni0"

// Conf is the bridge plugin's configuration: the reference bridge's fields.
type Conf struct {
	cniplugin.NetConf
	BrName       string `json:"bridge"`
	IsGW         bool   `json:"isGateway"`
	IsDefaultGW  bool   `json:"isDefaultGateway"`
	ForceAddress bool   `json:"forceAddress"`
	IPMasq       bool   `json:"ipMasq"`
	// IPMasqBackend is accepted for compatibility when it names a backend
	// the reference knows; podnet always programs its own nftables table.
	IPMasqBackend             *string      `json:"ipMasqBackend,omitempty"`
	MTU                       int          `json:"mtu"`
	HairpinMode               bool         `json:"hairpinMode"`
	PromiscMode               bool         `json:"promiscMode"`
	Vlan                      int          `json:"vlan"`
	VlanTrunk                 []*VlanTrunk `json:"vlanTrunk,omitempty"`
	PreserveDefaultVlan       bool         `json:"preserveDefaultVlan"`
	MacSpoofChk               bool         `json:"macspoofchk,omitempty"`
	EnableDad                 bool         `json:"enabledad,omitempty"`
	DisableContainerInterface bool         `json:"disableContainerInterface,omitempty"`
	PortIsolation             bool         `json:"portIsolation,omitempty"`

	Args struct {
		Cni struct {
			Mac string `json:"mac,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`
	RuntimeConfig struct {
		Mac string `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	mac   net.HardwareAddr
	vlans []int
}

// VlanTrunk is one entry of vlanTrunk: a single id or a min–max range.
type VlanTrunk struct {
	MinID *int `json:"minID,omitempty"`
	MaxID *int `json:"maxID,omitempty"`
	ID    *int `json:"id,omitempty"`
}

// load decodes and validates the configuration and CNI_ARGS.
func load(data []byte, envArgs string) (*Conf, error) {
	c := &Conf{BrName: defaultBridge, PreserveDefaultVlan: true}
	if err := cniplugin.Decode(data, c); err != nil {
		return nil, err
	}
	if c.BrName == "" {
		c.BrName = defaultBridge
	}
	if err := cniplugin.CheckLinkName("bridge", c.BrName); err != nil {
		return nil, err
	}
	if c.MTU < 0 || c.MTU > 65535 {
		return nil, cniplugin.Invalid("invalid mtu %d", c.MTU)
	}
	if c.Vlan < 0 || c.Vlan > 4094 {
		return nil, cniplugin.Invalid("invalid VLAN ID %d (must be between 0 and 4094)", c.Vlan)
	}
	var err error
	if c.vlans, err = trunkVlans(c.VlanTrunk); err != nil {
		return nil, err
	}
	if c.Vlan > 0 && c.vlans != nil {
		return nil, cniplugin.Invalid("cannot set vlan and vlanTrunk at the same time")
	}
	if c.HairpinMode && c.PromiscMode {
		return nil, cniplugin.Invalid("cannot set hairpin mode and promiscuous mode at the same time")
	}
	if c.DisableContainerInterface && c.IPAM.Type != "" {
		return nil, cniplugin.Invalid("disableContainerInterface cannot be used with IPAM")
	}
	if c.IsDefaultGW {
		c.IsGW = true
	}
	args, err := cniplugin.ParseArgs(envArgs)
	if err != nil {
		return nil, err
	}
	mac := string(args.MAC)
	if c.Args.Cni.Mac != "" {
		mac = c.Args.Cni.Mac
	}
	if c.RuntimeConfig.Mac != "" {
		mac = c.RuntimeConfig.Mac
	}
	if mac != "" {
		if c.mac, err = net.ParseMAC(mac); err != nil {
			return nil, cniplugin.Invalid("invalid MAC address %q: %v", mac, err)
		}
		if err := cniplugin.CheckMAC("MAC address", c.mac); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// trunkVlans expands vlanTrunk into a sorted list of VLAN ids.
func trunkVlans(trunks []*VlanTrunk) ([]int, error) {
	if trunks == nil {
		return nil, nil
	}
	valid := func(v int) bool { return v > 0 && v <= 4094 }
	set := map[int]struct{}{}
	for _, t := range trunks {
		if t == nil {
			continue
		}
		switch {
		case t.MinID != nil && t.MaxID != nil:
			if !valid(*t.MinID) || !valid(*t.MaxID) {
				return nil, cniplugin.Invalid("incorrect trunk minID/maxID parameter")
			}
			if *t.MaxID < *t.MinID {
				return nil, cniplugin.Invalid("minID is greater than maxID in trunk parameter")
			}
			for v := *t.MinID; v <= *t.MaxID; v++ {
				set[v] = struct{}{}
			}
		case t.MinID != nil || t.MaxID != nil:
			return nil, cniplugin.Invalid("minID and maxID should be configured simultaneously")
		}
		if t.ID != nil {
			if !valid(*t.ID) {
				return nil, cniplugin.Invalid("incorrect trunk id parameter")
			}
			set[*t.ID] = struct{}{}
		}
	}
	if len(set) == 0 {
		return nil, nil
	}
	out := make([]int, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	sort.Ints(out)
	return out, nil
}
