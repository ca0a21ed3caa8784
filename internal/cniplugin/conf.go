package cniplugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"
)

// NetConf is the part of a network configuration every podnet plugin reads:
// the spec's common fields plus the GC attachment lists.
type NetConf struct {
	types.NetConf
	// LegacyAttachments is the pre-1.1 spelling of cni.dev/valid-attachments
	// that some runtimes still send.
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
}

// Conf is implemented by every plugin configuration that embeds NetConf.
type Conf interface {
	Common() *NetConf
}

// Common returns the shared part of the configuration.
func (n *NetConf) Common() *NetConf { return n }

// Decode parses a network configuration into conf (a struct embedding
// NetConf), checks its cniVersion and parses its prevResult. Every failure
// is a spec error: malformed JSON is 6, an unsupported version 1, a missing
// version or name 7.
func Decode(data []byte, conf Conf) error {
	if err := json.Unmarshal(data, conf); err != nil {
		return NewError(types.ErrDecodingFailure, "failed to parse network configuration", err.Error())
	}
	c := conf.Common()
	if c.CNIVersion == "" {
		return NewError(types.ErrInvalidNetworkConfig, "network configuration has no cniVersion", "")
	}
	if !supported(c.CNIVersion) {
		return NewError(types.ErrIncompatibleCNIVersion, "incompatible CNI versions",
			fmt.Sprintf("config is %q, plugin supports %v", c.CNIVersion, SupportedVersions.SupportedVersions()))
	}
	if c.Name == "" {
		return NewError(types.ErrInvalidNetworkConfig, "network configuration has no name", "")
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.NetConf); err != nil {
			return NewError(types.ErrDecodingFailure, "failed to parse prevResult", err.Error())
		}
	}
	return nil
}

// DecodeNew decodes data into a new configuration of type T (see Decode).
func DecodeNew[T any, P interface {
	*T
	Conf
}](data []byte) (P, error) {
	c := P(new(T))
	if err := Decode(data, c); err != nil {
		return nil, err
	}
	return c, nil
}

func supported(v string) bool {
	for _, s := range SupportedVersions.SupportedVersions() {
		if s == v {
			return true
		}
	}
	return false
}

// Prev returns the configuration's prevResult converted to the
// current result type, or an empty result when there is none.
func (n *NetConf) Prev() (*current.Result, error) {
	if n.NetConf.PrevResult == nil {
		return &current.Result{CNIVersion: current.ImplementedSpecVersion}, nil
	}
	r, err := current.NewResultFromResult(n.NetConf.PrevResult)
	if err != nil {
		return nil, NewError(types.ErrDecodingFailure, "failed to convert prevResult", err.Error())
	}
	return r, nil
}

// KeepsAttachment tells GC whether an attachment is still valid: it is
// listed in cni.dev/valid-attachments or the legacy cni.dev/attachments.
func (n *NetConf) KeepsAttachment(a attachment.ID) bool {
	for _, lists := range [][]types.GCAttachment{n.ValidAttachments, n.LegacyAttachments} {
		for _, v := range lists {
			if v.ContainerID == a.ContainerID && v.IfName == a.IfName {
				return true
			}
		}
	}
	return false
}

// checkGCInput refuses a GC whose configuration lacks the list of valid
// attachments: the spec requires cni.dev/valid-attachments, and libcni
// always sends it. Without it GC would take every attachment of the
// network for stale, so the call is invalid (7) and nothing is collected.
// The legacy cni.dev/attachments key, which libcni sends as well, is
// accepted in its place. A null list is libcni's encoding of a runtime's
// nil slice — no attachment is valid, as an empty array says — and is
// accepted as such: refusing it would break GC on a node without pods.
func checkGCInput(data []byte) error {
	var lists map[string]json.RawMessage
	if err := json.Unmarshal(data, &lists); err != nil {
		return NewError(types.ErrDecodingFailure, "failed to parse network configuration", err.Error())
	}
	_, valid := lists["cni.dev/valid-attachments"]
	_, legacy := lists["cni.dev/attachments"]
	if !valid && !legacy {
		return NewError(types.ErrInvalidNetworkConfig, "GC without cni.dev/valid-attachments",
			"the list of valid attachments is missing; an empty array says none is valid")
	}
	var typed struct {
		Valid  []types.GCAttachment `json:"cni.dev/valid-attachments"`
		Legacy []types.GCAttachment `json:"cni.dev/attachments"`
	}
	if err := json.Unmarshal(data, &typed); err != nil {
		return NewError(types.ErrDecodingFailure, "failed to parse network configuration", err.Error())
	}
	return nil
}

// AttachmentOf returns the identity of the attachment a call is about.
func AttachmentOf(network string, args *skel.CmdArgs) attachment.ID {
	return attachment.ID{Network: network, ContainerID: args.ContainerID, IfName: args.IfName}
}

// CommonArgs are the CNI_ARGS keys podnet understands; unknown keys are
// accepted when IgnoreUnknown=1 is set, as the spec describes.
type CommonArgs struct {
	types.CommonArgs
	// IP requests addresses (host-local, static).
	IP ipList `json:"ip,omitempty"`
	// MAC requests the container interface's hardware address.
	MAC types.UnmarshallableString `json:"mac,omitempty"`
	// GATEWAY gives static IPAM gateways, comma-separated.
	GATEWAY types.UnmarshallableString `json:"gateway,omitempty"`
}

// ParseArgs parses CNI_ARGS; a malformed string or unknown key without
// IgnoreUnknown is an invalid-environment error (4).
func ParseArgs(s string) (*CommonArgs, error) {
	return parseArgs[CommonArgs](s)
}

// PodArgs are CommonArgs with the keys a Kubernetes runtime (kubelet
// through containerd or CRI-O) adds to name the pod; they are empty when
// the runtime is not Kubernetes.
type PodArgs struct {
	CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
}

// ParsePodArgs parses CNI_ARGS with the Kubernetes pod's keys, as
// ParseArgs does.
func ParsePodArgs(s string) (*PodArgs, error) {
	return parseArgs[PodArgs](s)
}

func parseArgs[T any](s string) (*T, error) {
	a := new(T)
	if err := types.LoadArgs(s, a); err != nil {
		return nil, NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS", err.Error())
	}
	return a, nil
}

// ipList is the IP= argument: one or more addresses separated by commas,
// each optionally with a prefix length (as static IPAM takes them).
type ipList []string

// UnmarshalText implements encoding.TextUnmarshaler for types.LoadArgs.
func (l *ipList) UnmarshalText(b []byte) error {
	for _, s := range strings.Split(string(b), ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		addr := s
		if i := strings.IndexByte(s, '/'); i >= 0 {
			addr = s[:i]
			if _, _, err := net.ParseCIDR(s); err != nil {
				return fmt.Errorf("invalid IP %q: %w", s, err)
			}
		}
		if net.ParseIP(addr) == nil {
			return fmt.Errorf("invalid IP %q", s)
		}
		*l = append(*l, s)
	}
	if len(*l) == 0 {
		return errors.New("IP= is empty")
	}
	return nil
}

// CheckLinkName is error 7 unless name, the value of a configuration
// field naming a link (such as a bridge or a master), is a name the
// kernel takes: the rules the spec gives CNI_IFNAME (at most 15 bytes,
// not "." or "..", no '/', ':' or white space).
func CheckLinkName(field, name string) error {
	if e := utils.ValidateInterfaceName(name); e != nil {
		return NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("invalid %s %q: %s", field, name, e.Msg), e.Details)
	}
	return nil
}

// CheckMAC is error 7 unless mac can be an interface's own address: six
// bytes, unicast, not all zeros. source names where it came from.
func CheckMAC(source string, mac net.HardwareAddr) error {
	if len(mac) != 6 || mac[0]&1 != 0 || bytes.Equal(mac, make(net.HardwareAddr, 6)) {
		return Invalid("%s %s is not a unicast Ethernet address", source, mac)
	}
	return nil
}
