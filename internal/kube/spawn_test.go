package kube

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/podnet/podnet/internal/netns"
	"golang.org/x/sys/unix"
)

// TestStartInNetNS checks that a child runs in the namespace, in its own
// session when detached, and that a child meant to die with the caller
// survives the threads the runtime ends meanwhile (each netns.Create
// ends one).
func TestStartInNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	for _, detach := range []bool{false, true} {
		ns, err := netns.NewTemp("kspawn")
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Remove()
		cmd := exec.Command("sleep", "60")
		if err := startInNetNS(ns.Path(), cmd, detach); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		defer func() { cmd.Process.Kill(); <-done }()
		var want, got unix.Stat_t
		if err := unix.Stat(ns.Path(), &want); err != nil {
			t.Fatal(err)
		}
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), &got); err != nil {
			t.Fatal(err)
		}
		if got.Ino != want.Ino {
			t.Errorf("detach=%v: child in netns inode %d, want %d", detach, got.Ino, want.Ino)
		}
		sid, err := unix.Getsid(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if (sid == cmd.Process.Pid) != detach {
			t.Errorf("detach=%v: child's session %d, pid %d", detach, sid, cmd.Process.Pid)
		}
		for range 30 {
			tmp, err := netns.NewTemp("kspawn")
			if err != nil {
				t.Fatal(err)
			}
			tmp.Remove()
		}
		select {
		case <-done:
			t.Fatalf("detach=%v: child died while threads ended: %v", detach, cmd.ProcessState)
		default:
		}
	}
}
