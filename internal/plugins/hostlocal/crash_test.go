package hostlocal

import (
	"bufio"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const crashChildEnv = "PODNET_HOSTLOCAL_CRASH_CHILD"

// crashConf is the network the crash test hammers: small enough to wrap.
func crashConf(dir string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net1","ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.20.0.0/26"}],[{"subnet":"fd00:20::/122"}]]}}`, dir))
}

// TestCrashChild is the process the crash test kills: it adds and deletes
// attachments forever, journaling each completed ADD and DEL like a
// runtime would.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("run by TestKill9NeverDuplicatesNorLeaks")
	}
	journal, err := os.OpenFile(filepath.Join(dir, "journal"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	c := crashConf(dir)
	// As a restarted runtime does, first delete what earlier (killed)
	// children left attached, so the small range never runs dry.
	// A DEL is journaled before it starts: as for a runtime, an
	// attachment whose DEL began is no longer valid, whether or not the
	// DEL finished before the kill.
	del := func(id string) {
		fmt.Fprintf(journal, "del %s\n", id)
		_ = Plugin().Del(cmdArgs(c, id, "eth0", ""))
	}
	for id, attached := range journaled(t, dir) {
		if attached {
			del(id)
		}
	}
	live := map[string]bool{}
	for i := 0; ; i++ {
		id := fmt.Sprintf("p%d-%d", os.Getpid(), i)
		if _, err := Plugin().Add(cmdArgs(c, id, "eth0", "")); err == nil {
			fmt.Fprintf(journal, "add %s\n", id)
			live[id] = true
		}
		if len(live) > 20 {
			for old := range live {
				del(old)
				delete(live, old)
				break
			}
		}
	}
}

// TestKill9NeverDuplicatesNorLeaks SIGKILLs allocating processes at random
// moments, then checks that no address is held twice, no attachment holds
// two addresses of one family, and GC with the journal's live attachments
// leaves exactly one address per family for each of them.
func TestKill9NeverDuplicatesNorLeaks(t *testing.T) {
	dir := t.TempDir()
	rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
	for round := 0; round < 25; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		before := journalSize(dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill at a random moment once the child is allocating (its
		// start-up takes long on a loaded machine, the race detector on).
		deadline := time.Now().Add(time.Minute)
		for journalSize(dir) == before {
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				t.Fatalf("round %d: the child made no progress in a minute", round)
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rnd.Intn(100)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}

	if journalSize(dir) == 0 {
		t.Fatal("no child completed an ADD")
	}
	live := journaled(t, dir)

	// No attachment holds two addresses of a family, before GC.
	owners := ownersByFamily(t, dir)
	for o, n := range owners {
		if n > 1 {
			t.Errorf("%s holds %d addresses", o, n)
		}
	}

	var valid []string
	for id, ok := range live {
		if ok {
			valid = append(valid, fmt.Sprintf(`{"containerID":%q,"ifname":"eth0"}`, id))
		}
	}
	gcConf := strings.Replace(string(crashConf(dir)), `"name":"net1"`, `"name":"net1","cni.dev/valid-attachments":[`+strings.Join(valid, ",")+`]`, 1)
	if err := Plugin().GC(cmdArgs([]byte(gcConf), "", "", "")); err != nil {
		t.Fatal(err)
	}
	after := ownersByFamily(t, dir)
	for id, ok := range live {
		if !ok {
			continue
		}
		for _, fam := range []string{"v4", "v6"} {
			if after[id+"/"+fam] != 1 {
				t.Errorf("live %s holds %d %s addresses after GC", id, after[id+"/"+fam], fam)
			}
		}
	}
	for o := range after {
		id, _, _ := strings.Cut(o, "/")
		if !live[id] {
			t.Errorf("GC left an address of %s", o)
		}
	}
	// The store still works.
	if _, err := Plugin().Add(cmdArgs(crashConf(dir), "after", "eth0", "")); err != nil && !strings.Contains(err.Error(), "no IP addresses") {
		t.Errorf("ADD after the crashes: %v", err)
	}
	if err := Plugin().Status(cmdArgs(crashConf(dir), "", "", "")); err != nil && !strings.Contains(err.Error(), "no free") {
		t.Errorf("STATUS after the crashes: %v", err)
	}
	t.Logf("%d rounds, %d live attachments", 25, len(valid))
}

// journaled returns the attachments the journal shows live (true) or
// deleted (false).
func journaled(t *testing.T, dir string) map[string]bool {
	t.Helper()
	live := map[string]bool{}
	f, err := os.Open(filepath.Join(dir, "journal"))
	if err != nil {
		if os.IsNotExist(err) {
			return live
		}
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		verb, id, _ := strings.Cut(sc.Text(), " ")
		live[id] = verb == "add"
	}
	return live
}

// journalSize is the size of the children's journal (0 before the first).
func journalSize(dir string) int64 {
	fi, err := os.Stat(filepath.Join(dir, "journal"))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// ownersByFamily counts the addresses each container holds per family.
func ownersByFamily(t *testing.T, dir string) map[string]int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "net1"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "10.") && !strings.HasPrefix(name, "fd00") {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(dir, "net1", name))
		id, _, _ := strings.Cut(string(b), "\r\n")
		fam := "v4"
		if strings.Contains(name, ":") {
			fam = "v6"
		}
		out[id+"/"+fam]++
	}
	return out
}
