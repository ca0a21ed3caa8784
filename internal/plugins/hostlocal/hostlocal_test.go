package hostlocal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/cniplugin"
)

const refHostLocal = "/usr/lib/cni/host-local"

func conf(t testing.TB, version, dataDir, ipam string) []byte {
	t.Helper()
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"net1","type":"bridge","ipam":{"type":"host-local","dataDir":%q,%s}}`, version, dataDir, ipam))
}

func cmdArgs(stdin []byte, id, ifname, cniArgs string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, IfName: ifname, StdinData: stdin, Args: cniArgs}
}

// addrs runs ADD in-process and returns the allocated addresses.
func addrs(t testing.TB, stdin []byte, id string) []string {
	t.Helper()
	r, err := Plugin().Add(cmdArgs(stdin, id, "eth0", ""))
	if err != nil {
		t.Fatalf("ADD %s: %v", id, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ip := range res.IPs {
		out = append(out, ip.Address.String())
	}
	return out
}

// refAddrs runs the reference host-local binary; nil when it fails.
func refAddrs(t testing.TB, command string, stdin []byte, id string) []string {
	t.Helper()
	cmd := exec.Command(refHostLocal)
	cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id, "CNI_NETNS=/proc/self/ns/net", "CNI_IFNAME=eth0", "CNI_PATH=/usr/lib/cni"}
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		if command == "ADD" && strings.Contains(string(out), "no IP addresses available") {
			return nil
		}
		t.Fatalf("reference %s %s: %v: %s", command, id, err, out)
	}
	if command != "ADD" {
		return nil
	}
	var res current.Result
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, ip := range res.IPs {
		ips = append(ips, ip.Address.String())
	}
	return ips
}

// TestOrderMatchesReference allocates, releases and reallocates under both
// implementations with the same configs and compares every address.
func TestOrderMatchesReference(t *testing.T) {
	if _, err := os.Stat(refHostLocal); err != nil {
		t.Skip("reference host-local not installed (apt-get install containernetworking-plugins)")
	}
	for name, ipam := range map[string]string{
		"small v4 with gateway in range": `"ranges":[[{"subnet":"10.5.0.0/29","gateway":"10.5.0.3"}]]`,
		"start end":                      `"ranges":[[{"subnet":"10.6.0.0/24","rangeStart":"10.6.0.250","rangeEnd":"10.6.0.254"}]]`,
		"two ranges in a set":            `"ranges":[[{"subnet":"10.7.0.0/30"},{"subnet":"10.7.1.0/29","rangeStart":"10.7.1.4"}]]`,
		"dual stack":                     `"ranges":[[{"subnet":"10.8.0.0/29"}],[{"subnet":"fd00:8::/125"}]]`,
		"legacy fields":                  `"subnet":"10.9.0.0/29","rangeStart":"10.9.0.2"`,
	} {
		t.Run(name, func(t *testing.T) {
			ours := conf(t, "1.0.0", t.TempDir(), ipam)
			ref := conf(t, "1.0.0", t.TempDir(), ipam)
			// Fill up, with a release in the middle, then wrap around.
			steps := []struct{ cmd, id string }{
				{"ADD", "a"}, {"ADD", "b"}, {"ADD", "c"}, {"DEL", "b"}, {"ADD", "d"}, {"ADD", "e"}, {"DEL", "a"}, {"ADD", "f"}, {"ADD", "g"},
			}
			for _, s := range steps {
				if s.cmd == "DEL" {
					refAddrs(t, "DEL", ref, s.id)
					if err := Plugin().Del(cmdArgs(ours, s.id, "eth0", "")); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want := refAddrs(t, "ADD", ref, s.id)
				if want == nil {
					if _, err := Plugin().Add(cmdArgs(ours, s.id, "eth0", "")); err == nil || !strings.Contains(err.Error(), "no IP addresses available") {
						t.Fatalf("ADD %s: reference is exhausted, podnet says %v", s.id, err)
					}
					continue
				}
				got := addrs(t, ours, s.id)
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Fatalf("ADD %s: podnet %v, reference %v", s.id, got, want)
				}
			}
		})
	}
}

func TestRequestedIPs(t *testing.T) {
	dir := t.TempDir()
	c := conf(t, "1.1.0", dir, `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:1::/64"}]]`)
	r, err := Plugin().Add(cmdArgs(c, "a", "eth0", "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.0.50,fd00:1::50"))
	if err != nil {
		t.Fatal(err)
	}
	res, _ := current.NewResultFromResult(r)
	if len(res.IPs) != 2 || res.IPs[0].Address.IP.String() != "10.1.0.50" || res.IPs[1].Address.IP.String() != "fd00:1::50" {
		t.Fatalf("result %v", res.IPs)
	}
	// The ips capability, as libcni injects it.
	var m map[string]any
	_ = json.Unmarshal(c, &m)
	m["runtimeConfig"] = map[string]any{"ips": []string{"10.1.0.60/24"}}
	capConf, _ := json.Marshal(m)
	got := addrs(t, capConf, "b")
	if got[0] != "10.1.0.60/24" {
		t.Errorf("ips capability: %v", got)
	}
	for _, tc := range []struct{ name, args string }{
		{"taken", "IP=10.1.0.50"},
		{"gateway", "IP=10.1.0.1"},
		{"outside", "IP=10.2.0.5"},
	} {
		if _, err := Plugin().Add(cmdArgs(c, "x-"+tc.name, "eth0", tc.args)); err == nil {
			t.Errorf("%s: ADD succeeded", tc.name)
		}
		// A failed ADD leaves nothing of its own behind.
		if ips := allocatedTo(t, dir, "x-"+tc.name); len(ips) != 0 {
			t.Errorf("%s: failed ADD left %v", tc.name, ips)
		}
	}
}

// allocatedTo lists the address files owned by a container ID.
func allocatedTo(t testing.TB, dir, id string) []string {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(dir, "net1"))
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, "net1", e.Name()))
		if err == nil && e.Type().IsRegular() && strings.HasPrefix(string(b), id+"\r\n") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestDelCheckGCStatus(t *testing.T) {
	dir := t.TempDir()
	c := conf(t, "1.1.0", dir, `"ranges":[[{"subnet":"10.3.0.0/30"}]]`)
	// A /30 has one allocatable address besides the gateway.
	addrs(t, c, "a")
	if err := Plugin().Check(cmdArgs(c, "a", "eth0", "")); err != nil {
		t.Errorf("CHECK of a held address: %v", err)
	}
	if err := Plugin().Check(cmdArgs(c, "nobody", "eth0", "")); err == nil {
		t.Error("CHECK of an unknown attachment succeeded")
	}
	var e *types.Error
	if err := Plugin().Status(cmdArgs(c, "", "", "")); !errors.As(err, &e) || e.Code != cniplugin.ErrPluginNotAvailable {
		t.Errorf("STATUS of a full range: %v, want code 50", err)
	}
	if _, err := Plugin().Add(cmdArgs(c, "b", "eth0", "")); err == nil || !strings.Contains(err.Error(), "no IP addresses available") {
		t.Errorf("ADD in a full range: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := Plugin().Del(cmdArgs(c, "a", "eth0", "")); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if err := Plugin().Status(cmdArgs(c, "", "", "")); err != nil {
		t.Errorf("STATUS after release: %v", err)
	}
	// GC keeps exactly the valid attachments.
	big := conf(t, "1.1.0", dir, `"ranges":[[{"subnet":"10.3.0.0/24"}]]`)
	for _, id := range []string{"k1", "k2", "g1", "g2"} {
		addrs(t, big, id)
	}
	var m map[string]any
	_ = json.Unmarshal(big, &m)
	m["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "k1", "ifname": "eth0"}}
	m["cni.dev/attachments"] = []map[string]string{{"containerID": "k2", "ifname": "eth0"}}
	gcConf, _ := json.Marshal(m)
	if err := Plugin().GC(cmdArgs(gcConf, "", "", "")); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]int{"k1": 1, "k2": 1, "g1": 0, "g2": 0} {
		if got := len(allocatedTo(t, dir, id)); got != want {
			t.Errorf("after GC %s holds %d addresses, want %d", id, got, want)
		}
	}
}

func TestBadConfig(t *testing.T) {
	dir := t.TempDir()
	good := conf(t, "1.0.0", dir, `"ranges":[[{"subnet":"10.4.0.0/24"}]]`)
	addrs(t, good, "keep")
	for _, tc := range []struct {
		name string
		conf []byte
		args string
		code uint
	}{
		{"malformed", []byte(`{"cniVersion":"1.0.0","name":"net1","ipam":{`), "", types.ErrDecodingFailure},
		{"no version", []byte(`{"name":"net1","ipam":{"type":"host-local","subnet":"10.4.0.0/24"}}`), "", types.ErrInvalidNetworkConfig},
		{"unknown version", conf(t, "2.0.0", dir, `"subnet":"10.4.0.0/24"`), "", types.ErrIncompatibleCNIVersion},
		{"no ipam", []byte(`{"cniVersion":"1.0.0","name":"net1"}`), "", types.ErrInvalidNetworkConfig},
		{"no ranges", conf(t, "1.0.0", dir, `"routes":[]`), "", types.ErrInvalidNetworkConfig},
		{"bad CIDR", conf(t, "1.0.0", dir, `"subnet":"10.4.0.0/33"`), "", types.ErrInvalidNetworkConfig},
		{"host bits", conf(t, "1.0.0", dir, `"subnet":"10.4.0.5/24"`), "", types.ErrInvalidNetworkConfig},
		{"too small", conf(t, "1.0.0", dir, `"subnet":"10.4.0.0/31"`), "", types.ErrInvalidNetworkConfig},
		{"start outside", conf(t, "1.0.0", dir, `"ranges":[[{"subnet":"10.4.0.0/24","rangeStart":"10.5.0.1"}]]`), "", types.ErrInvalidNetworkConfig},
		{"start after end", conf(t, "1.0.0", dir, `"ranges":[[{"subnet":"10.4.0.0/24","rangeStart":"10.4.0.9","rangeEnd":"10.4.0.3"}]]`), "", types.ErrInvalidNetworkConfig},
		{"overlap", conf(t, "1.0.0", dir, `"ranges":[[{"subnet":"10.4.0.0/24"},{"subnet":"10.4.0.0/25"}]]`), "", types.ErrInvalidNetworkConfig},
		{"mixed families", conf(t, "1.0.0", dir, `"ranges":[[{"subnet":"10.4.0.0/24"},{"subnet":"fd00::/64"}]]`), "", types.ErrInvalidNetworkConfig},
		{"two v4 under 0.2.0", conf(t, "0.2.0", dir, `"ranges":[[{"subnet":"10.4.0.0/24"}],[{"subnet":"10.5.0.0/24"}]]`), "", types.ErrInvalidNetworkConfig},
		{"bad IP arg", good, "IP=10.4.0.999", types.ErrInvalidEnvironmentVariables},
		{"unknown arg", good, "FOO=1", types.ErrInvalidEnvironmentVariables},
		{"malformed args", good, "IP", types.ErrInvalidEnvironmentVariables},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Plugin().Add(cmdArgs(tc.conf, "bad", "eth0", tc.args))
			var e *types.Error
			if !errors.As(err, &e) || e.Code != tc.code {
				t.Fatalf("got %v, want code %d", err, tc.code)
			}
			if got := allocatedTo(t, dir, "keep"); len(got) != 1 {
				t.Fatalf("existing allocation changed: %v", got)
			}
		})
	}
}

func TestEveryVersion(t *testing.T) {
	for _, v := range []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			c := conf(t, v, t.TempDir(), `"ranges":[[{"subnet":"10.10.0.0/24"}],[{"subnet":"fd00:10::/64"}]],"routes":[{"dst":"0.0.0.0/0"}]`)
			r, err := Plugin().Add(cmdArgs(c, "a", "eth0", ""))
			if err != nil {
				t.Fatal(err)
			}
			conv, err := r.GetAsVersion(v)
			if err != nil {
				t.Fatalf("convert to %s: %v", v, err)
			}
			var buf bytes.Buffer
			if err := conv.PrintTo(&buf); err != nil {
				t.Fatal(err)
			}
			out := buf.String()
			for _, want := range []string{"10.10.0.2/24", "fd00:10::2/64", "0.0.0.0/0"} {
				if !strings.Contains(out, want) {
					t.Errorf("%s result lacks %s: %s", v, want, out)
				}
			}
		})
	}
}

func TestConcurrentProcessesNoDuplicates(t *testing.T) {
	dir := t.TempDir()
	c := conf(t, "1.0.0", dir, `"ranges":[[{"subnet":"10.11.0.0/24"}]]`)
	var wg sync.WaitGroup
	seen := sync.Map{}
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, err := Plugin().Add(cmdArgs(c, fmt.Sprintf("c%d", i), "eth0", ""))
			if err != nil {
				errs <- err
				return
			}
			res, _ := current.NewResultFromResult(r)
			if prev, dup := seen.LoadOrStore(res.IPs[0].Address.IP.String(), i); dup {
				errs <- fmt.Errorf("%s given to c%d and c%d", res.IPs[0].Address.IP, prev, i)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestReAddReturnsSameAddress: an ADD retried without DEL (after a crash)
// gets the attachment's address back instead of leaking a second one.
func TestReAddReturnsSameAddress(t *testing.T) {
	dir := t.TempDir()
	c := conf(t, "1.0.0", dir, `"ranges":[[{"subnet":"10.12.0.0/24"}]]`)
	first := addrs(t, c, "a")
	again := addrs(t, c, "a")
	if first[0] != again[0] || len(allocatedTo(t, dir, "a")) != 1 {
		t.Errorf("re-ADD gave %v then %v", first, again)
	}
}
