package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/netns"
)

// Outcome is what one plugin execution produced.
type Outcome struct {
	Stdout, Stderr []byte
	ExitCode       int
	// Wall is the time from fork to exit; User and Sys the CPU time the
	// plugin (and any child it waited for) used.
	Wall, User, Sys time.Duration
}

// Error parses stdout as a spec error; ok is false when stdout is not one.
func (o *Outcome) Error() (e *types.Error, ok bool) {
	var v struct {
		CNIVersion string `json:"cniVersion"`
		Code       *uint  `json:"code"`
		Msg        string `json:"msg"`
		Details    string `json:"details"`
	}
	if err := json.Unmarshal(o.Stdout, &v); err != nil || v.Code == nil {
		return nil, false
	}
	return &types.Error{Code: *v.Code, Msg: v.Msg, Details: v.Details}, true
}

// Exec runs a plugin binary the way a runtime does — env holds the CNI_*
// variables, stdin the configuration — as a child of a thread inside ns.
// The environment is exactly env plus a PATH: nothing leaks from the
// caller's. A non-zero exit is reported in the Outcome, not as an error.
func Exec(ctx context.Context, ns *netns.NS, plugin string, env []string, stdin []byte) (*Outcome, error) {
	o := &Outcome{}
	run := func() error {
		cmd := exec.CommandContext(ctx, plugin)
		cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
		cmd.Stdin = bytes.NewReader(stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		o.Wall = time.Since(start)
		o.Stdout, o.Stderr = stdout.Bytes(), stderr.Bytes()
		if ps := cmd.ProcessState; ps != nil {
			o.ExitCode = ps.ExitCode()
			o.User, o.Sys = ps.UserTime(), ps.SystemTime()
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok && ru != nil {
				o.User = time.Duration(ru.Utime.Nano())
				o.Sys = time.Duration(ru.Stime.Nano())
			}
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return err
		}
		return nil
	}
	if ns == nil {
		return o, run()
	}
	return o, ns.Do(run)
}

// Env builds a plugin's CNI_* environment.
func Env(command, containerID, netnsPath, ifName, cniPath string) []string {
	return []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + containerID,
		"CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=" + ifName,
		"CNI_PATH=" + cniPath,
	}
}
