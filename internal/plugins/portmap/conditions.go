package portmap

import (
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/nft/podrules"
)

// Route types of "-m addrtype" and "fib … type", by name.
var addrTypes = map[string]uint32{
	"unspec": unix.RTN_UNSPEC, "unicast": unix.RTN_UNICAST, "local": unix.RTN_LOCAL,
	"broadcast": unix.RTN_BROADCAST, "anycast": unix.RTN_ANYCAST, "multicast": unix.RTN_MULTICAST,
	"blackhole": unix.RTN_BLACKHOLE, "unreachable": unix.RTN_UNREACHABLE, "prohibit": unix.RTN_PROHIBIT,
}

// parseConditions compiles the reference's conditionsV4/V6 into nftables
// match expressions. Each element may hold one argument or several
// separated by spaces. The iptables syntax (the reference's iptables
// backend) understands [!] -s/--source, -d/--destination ADDR[/LEN],
// [!] -i/--in-interface, -o/--out-interface NAME[+], -m addrtype with
// [!] --src-type/--dst-type TYPE, and -m comment --comment TEXT (ignored).
// The nftables syntax (backend nftables) understands ip/ip6
// saddr/daddr [!=] ADDR[/LEN], iifname/oifname [!=] NAME[*], and fib
// saddr/daddr type [!=] TYPE. Anything else is error 2 (unsupported
// field); a malformed match is error 7.
func parseConditions(conds []string, v6, nftSyntax bool) ([]expr.Any, error) {
	var toks []string
	for _, c := range conds {
		toks = append(toks, strings.Fields(c)...)
	}
	p := &condParser{toks: toks, v6: v6}
	if nftSyntax {
		return p.nftables()
	}
	return p.iptables()
}

type condParser struct {
	toks []string
	i    int
	v6   bool
	out  []expr.Any
}

func (p *condParser) unsupported(tok string) error {
	return cniplugin.NewError(types.ErrUnsupportedField,
		fmt.Sprintf("portmap condition %q cannot be expressed as an nftables match by podnet", tok),
		"supported: "+strings.Join([]string{"-s", "-d", "-i", "-o", "-m addrtype --src-type/--dst-type", "-m comment", "(backend nftables: ip/ip6 saddr/daddr, iifname/oifname, fib saddr/daddr type)"}, ", "))
}

func (p *condParser) invalid(format string, a ...any) error {
	return cniplugin.Invalid("portmap condition: "+format, a...)
}

// next returns the argument of the option at p.i-1.
func (p *condParser) next(opt string) (string, error) {
	if p.i >= len(p.toks) {
		return "", p.invalid("%s needs a value", opt)
	}
	p.i++
	return p.toks[p.i-1], nil
}

func (p *condParser) iptables() ([]expr.Any, error) {
	modules := map[string]bool{}
	neg := false
	for p.i < len(p.toks) {
		tok := p.toks[p.i]
		p.i++
		if tok == "!" {
			if neg {
				return nil, p.invalid("double negation")
			}
			neg = true
			continue
		}
		var err error
		switch tok {
		case "-s", "--source", "--src", "-d", "--destination", "--dst":
			err = p.addr(tok, tok == "-d" || strings.HasPrefix(tok, "--d"), neg)
		case "-i", "--in-interface", "-o", "--out-interface":
			err = p.ifname(tok, tok == "-i" || tok == "--in-interface", neg, "+")
		case "-m", "--match":
			var m string
			if m, err = p.next(tok); err == nil {
				if neg || (m != "addrtype" && m != "comment") {
					return nil, p.unsupported(tok + " " + m)
				}
				modules[m] = true
			}
		case "--src-type", "--dst-type":
			if !modules["addrtype"] {
				return nil, p.invalid("%s without -m addrtype", tok)
			}
			err = p.fib(tok, tok == "--dst-type", neg)
		case "--comment":
			if !modules["comment"] || neg {
				return nil, p.invalid("--comment without -m comment")
			}
			_, err = p.next(tok)
		default:
			return nil, p.unsupported(tok)
		}
		if err != nil {
			return nil, err
		}
		neg = false
	}
	if neg {
		return nil, p.invalid("\"!\" negates nothing")
	}
	return p.out, nil
}

func (p *condParser) nftables() ([]expr.Any, error) {
	for p.i < len(p.toks) {
		tok := p.toks[p.i]
		p.i++
		var what string
		if tok == "ip" || tok == "ip6" || tok == "fib" {
			w, err := p.next(tok)
			if err != nil {
				return nil, err
			}
			what = w
		}
		neg := false
		if p.i < len(p.toks) && (p.toks[p.i] == "!=" || p.toks[p.i] == "==") {
			neg = p.toks[p.i] == "!="
			p.i++
		}
		var err error
		switch {
		case (tok == "ip" || tok == "ip6") && (what == "saddr" || what == "daddr"):
			if (tok == "ip6") != p.v6 {
				return nil, p.invalid("%s match in the conditions of the other family", tok)
			}
			err = p.addr(tok+" "+what, what == "daddr", neg)
		case tok == "iifname" || tok == "oifname":
			err = p.ifname(tok, tok == "iifname", neg, "*")
		case tok == "fib" && (what == "saddr" || what == "daddr"):
			if p.i >= len(p.toks) || p.toks[p.i] != "type" {
				return nil, p.unsupported("fib " + what)
			}
			p.i++
			if p.i < len(p.toks) && (p.toks[p.i] == "!=" || p.toks[p.i] == "==") {
				neg = p.toks[p.i] == "!="
				p.i++
			}
			err = p.fib("fib "+what+" type", what == "daddr", neg)
		default:
			return nil, p.unsupported(strings.TrimSpace(tok + " " + what))
		}
		if err != nil {
			return nil, err
		}
	}
	return p.out, nil
}

// addr adds a source or destination prefix match.
func (p *condParser) addr(opt string, dst, neg bool) error {
	v, err := p.next(opt)
	if err != nil {
		return err
	}
	var n *net.IPNet
	if strings.Contains(v, "/") {
		ip, pfx, err := net.ParseCIDR(v)
		if err != nil {
			return p.invalid("%s %q: %v", opt, v, err)
		}
		pfx.IP = ip
		n = pfx
	} else {
		ip := net.ParseIP(v)
		if ip == nil {
			return p.invalid("%s %q is not an address", opt, v)
		}
		bits := 128
		if ip.To4() != nil {
			ip, bits = ip.To4(), 32
		}
		n = &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}
	}
	if (n.IP.To4() == nil) != p.v6 {
		return p.invalid("%s %s is not of the conditions' address family", opt, v)
	}
	m, ok := podrules.AddrMatch(n, dst, neg)
	if !ok {
		return p.invalid("%s %q", opt, v)
	}
	p.out = append(p.out, m...)
	return nil
}

// ifname adds an input or output interface name match; a name ending
// in wildcard matches by prefix.
func (p *condParser) ifname(opt string, in, neg bool, wildcard string) error {
	v, err := p.next(opt)
	if err != nil {
		return err
	}
	v = strings.Trim(v, `"`)
	prefix := strings.HasSuffix(v, wildcard)
	name := strings.TrimSuffix(v, wildcard)
	if len(name) >= unix.IFNAMSIZ || strings.ContainsAny(name, "/ ") || name == "" && !prefix {
		return p.invalid("%s %q is not an interface name", opt, v)
	}
	data := []byte(name)
	if !prefix {
		data = make([]byte, unix.IFNAMSIZ)
		copy(data, name)
	}
	key := expr.MetaKeyOIFNAME
	if in {
		key = expr.MetaKeyIIFNAME
	}
	op := expr.CmpOpEq
	if neg {
		op = expr.CmpOpNeq
	}
	if len(data) == 0 { // "+" alone: any interface
		return nil
	}
	p.out = append(p.out, &expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: data})
	return nil
}

// fib adds an address type match.
func (p *condParser) fib(opt string, dst, neg bool) error {
	v, err := p.next(opt)
	if err != nil {
		return err
	}
	t, ok := addrTypes[strings.ToLower(v)]
	if !ok {
		if strings.Contains(v, ",") {
			return p.unsupported(opt + " " + v)
		}
		return p.invalid("%s %q is not an address type", opt, v)
	}
	p.out = append(p.out, podrules.FibAddrType(dst, t, neg)...)
	return nil
}
