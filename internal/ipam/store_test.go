package ipam

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// writeFile writes a file of the store, relative to its directory.
func writeFile(s *Store, name, content string) error {
	return os.WriteFile(filepath.Join(s.dir, name), []byte(content), 0o644)
}

func ip(s string) net.IP {
	c, err := Canonical(net.ParseIP(s))
	if err != nil {
		panic(err)
	}
	return c
}

// reserve reserves the addresses for o and records them in its index, as
// an ADD that completed does.
func reserve(t *testing.T, s *Store, o Owner, ips ...string) {
	t.Helper()
	var got []net.IP
	for _, a := range ips {
		if ok, err := s.Reserve(ip(a), o); err != nil || !ok {
			t.Fatalf("Reserve(%s, %v) = %v, %v", a, o, ok, err)
		}
		got = append(got, ip(a))
	}
	if err := s.SetAddresses(o, got); err != nil {
		t.Fatal(err)
	}
}

// files lists the store's directory, sorted, the lock left out.
func files(t *testing.T, s *Store, sub string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.dir, sub))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.Name() != "lock" && e.Name() != "attachments" {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func TestReserve(t *testing.T) {
	s := openStore(t, t.TempDir())
	a, b := owner("a"), owner("b")
	for _, tc := range []struct {
		ip   string
		o    Owner
		want bool
	}{
		{"10.0.0.2", a, true},
		{"10.0.0.2", b, false},
		{"10.0.0.2", a, false},
		{"fd00::2", b, true},
	} {
		ok, err := s.Reserve(ip(tc.ip), tc.o)
		if err != nil || ok != tc.want {
			t.Errorf("Reserve(%s, %v) = %v, %v, want %v", tc.ip, tc.o, ok, err, tc.want)
		}
	}
	if o, ok := s.OwnerOf(ip("10.0.0.2")); !ok || o != a {
		t.Errorf("10.0.0.2 belongs to %v, %v, want %v: a failed Reserve changed it", o, ok, a)
	}
	// The reference's format, so that its tools read podnet's store.
	if b, err := os.ReadFile(filepath.Join(s.dir, "10.0.0.2")); err != nil || string(b) != "a\r\neth0" {
		t.Errorf("address file = %q, %v", b, err)
	}
	if got, want := files(t, s, ""), []string{"10.0.0.2", "fd00::2"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("store holds %v, want %v (no temporary file left)", got, want)
	}
	if s.Allocated(ip("10.0.0.3")) || !s.Allocated(ip("fd00::2")) {
		t.Error("Allocated is wrong")
	}
}

func TestRelease(t *testing.T) {
	a, b := owner("a"), owner("b")
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, s *Store)
		left    []string // address files after Release(a), sorted
	}{
		{
			name:    "through the index",
			prepare: func(t *testing.T, s *Store) { reserve(t, s, a, "10.0.0.2", "fd00::2"); reserve(t, s, b, "10.0.0.3") },
			left:    []string{"10.0.0.3"},
		},
		{
			name: "no index: a crash before it was written",
			prepare: func(t *testing.T, s *Store) {
				reserve(t, s, b, "10.0.0.3")
				if ok, err := s.Reserve(ip("10.0.0.2"), a); !ok || err != nil {
					t.Fatal(ok, err)
				}
			},
			left: []string{"10.0.0.3"},
		},
		{
			name: "an index listing another owner's address",
			prepare: func(t *testing.T, s *Store) {
				reserve(t, s, b, "10.0.0.3")
				reserve(t, s, a, "10.0.0.2")
				if err := s.SetAddresses(a, []net.IP{ip("10.0.0.2"), ip("10.0.0.3")}); err != nil {
					t.Fatal(err)
				}
			},
			left: []string{"10.0.0.3"},
		},
		{
			name: "a corrupt index: garbage",
			prepare: func(t *testing.T, s *Store) {
				reserve(t, s, b, "10.0.0.3")
				reserve(t, s, a, "10.0.0.2", "fd00::2")
				if err := writeFile(s, "attachments/"+a.indexName(), "\x00\xffgarbage"); err != nil {
					t.Fatal(err)
				}
			},
			left: []string{"10.0.0.3"},
		},
		{
			name: "a corrupt index: empty",
			prepare: func(t *testing.T, s *Store) {
				reserve(t, s, a, "10.0.0.2")
				if err := writeFile(s, "attachments/"+a.indexName(), ""); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "a corrupt index: one address of two, and garbage",
			prepare: func(t *testing.T, s *Store) {
				reserve(t, s, a, "10.0.0.2", "fd00::2")
				if err := writeFile(s, "attachments/"+a.indexName(), "10.0.0.2\nfd00::zz\n"); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "a corrupt index: an address nobody holds",
			prepare: func(t *testing.T, s *Store) {
				reserve(t, s, a, "10.0.0.2")
				if err := s.SetAddresses(a, []net.IP{ip("10.0.0.9")}); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:    "nothing held",
			prepare: func(t *testing.T, s *Store) { reserve(t, s, b, "10.0.0.3") },
			left:    []string{"10.0.0.3"},
		},
		{
			name: "same container, another interface",
			prepare: func(t *testing.T, s *Store) {
				reserve(t, s, a, "10.0.0.2")
				reserve(t, s, Owner{ContainerID: "a", IfName: "net1"}, "10.0.0.4")
			},
			left: []string{"10.0.0.4"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			tc.prepare(t, s)
			// The first DEL releases everything; a repeated one is no error.
			for i := range 2 {
				if err := s.Release(a); err != nil {
					t.Fatal(err)
				}
				if got := files(t, s, ""); fmt.Sprint(got) != fmt.Sprint(tc.left) {
					t.Errorf("after Release #%d: %v, want %v", i+1, got, tc.left)
				}
			}
			if _, ok := s.Addresses(a); ok {
				t.Error("the index outlived Release")
			}
		})
	}
}

// TestReopenAfterCrash is a store as a process killed at each step of an
// ADD leaves it: a temporary address file not yet linked, an address
// file without its index, an index being rewritten. Reopened, the store
// never hands out an address that has a file, DEL releases the address
// without index, and GC clears the leftovers of what is not kept.
func TestReopenAfterCrash(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	kept, crashed := owner("kept"), owner("crashed")
	reserve(t, s, kept, "10.0.0.2")
	if ok, err := s.Reserve(ip("10.0.0.3"), crashed); !ok || err != nil {
		t.Fatal(ok, err)
	}
	for name, content := range map[string]string{
		".new-1234":                 "crashed\r\neth0",
		"attachments/kept@eth0.tmp": "10.0.0.2\n10.0.0.9\n",
	} {
		if err := writeFile(s, name, content); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	s = openStore(t, dir)
	set := mustSet(t, `[{"subnet":"10.0.0.0/29"}]`)
	got, _, err := (&Allocator{Set: set, Store: s}).Get(owner("new"), nil, nil)
	if err != nil || !got.IP.Equal(ip("10.0.0.4")) {
		t.Fatalf("Get after the crash = %v, %v, want 10.0.0.4", got, err)
	}
	if ips, ok := s.Addresses(kept); !ok || len(ips) != 1 || !ips[0].Equal(ip("10.0.0.2")) {
		t.Errorf("kept's index = %v, %v: a torn rewrite replaced it", ips, ok)
	}
	if err := s.Release(crashed); err != nil || s.Allocated(ip("10.0.0.3")) {
		t.Errorf("Release of the crashed ADD: %v, 10.0.0.3 allocated: %v", err, s.Allocated(ip("10.0.0.3")))
	}

	if ok, err := s.Reserve(ip("10.0.0.5"), crashed); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if err := s.GC(func(o Owner) bool { return o == kept }); err != nil {
		t.Fatal(err)
	}
	if got, want := files(t, s, ""), []string{"10.0.0.2", "last_reserved_ip.0"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after GC: %v, want %v", got, want)
	}
	if got, want := files(t, s, "attachments"), []string{"kept@eth0"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("indexes after GC: %v, want %v", got, want)
	}
}

// TestCorruptFiles: files a store can hold after a crash, an old
// reference plugin or a hand edit. An address file that names no owner
// keeps its address allocated until GC; damaged index lines are skipped.
func TestCorruptFiles(t *testing.T) {
	s := openStore(t, t.TempDir())
	for name, content := range map[string]string{
		"10.0.0.2":               "",
		"10.0.0.3":               "garbage",
		"10.0.0.4":               "ref\neth0\n", // the reference, before \r\n
		"10.0.0.5":               "\r\neth0",
		"README":                 "not an address",
		"attachments/ref@eth0":   "10.0.0.4\nnonsense\n\n10.0.0.99\n",
		"attachments/other@eth0": "",
	} {
		if err := writeFile(s, name, content); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []string{"10.0.0.2", "10.0.0.3", "10.0.0.5"} {
		if o, ok := s.OwnerOf(ip(a)); ok {
			t.Errorf("OwnerOf(%s) = %v, want none", a, o)
		}
	}
	if o, ok := s.OwnerOf(ip("10.0.0.4")); !ok || o != owner("ref") {
		t.Errorf("OwnerOf(10.0.0.4) = %v, %v, want the reference's owner", o, ok)
	}
	if ips, ok := s.Addresses(owner("ref")); !ok || fmt.Sprint(ips) != "[10.0.0.4 10.0.0.99]" {
		t.Errorf("Addresses(ref) = %v, %v", ips, ok)
	}
	got, _, err := (&Allocator{Set: mustSet(t, `[{"subnet":"10.0.0.0/29"}]`), Store: s}).Get(owner("new"), nil, nil)
	if err != nil || !got.IP.Equal(ip("10.0.0.6")) {
		t.Fatalf("Get = %v, %v, want 10.0.0.6: an ownerless file's address was handed out", got, err)
	}
	all, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 || all["10.0.0.3"] != (Owner{}) || all["10.0.0.4"] != owner("ref") {
		t.Errorf("Scan = %v", all)
	}
	if err := s.GC(func(Owner) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if got, want := files(t, s, ""), []string{"10.0.0.4", "10.0.0.6", "README", "last_reserved_ip.0"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after GC keeping every owner: %v, want %v", got, want)
	}
}

// TestIOFailures: the store's file system failing is ErrIO wrapping the
// cause and naming the path, and an address whose file cannot be read is
// neither released nor forgotten.
func TestIOFailures(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(file, "net")
	if !errors.Is(err, ErrIO) || !errors.Is(err, unix.ENOTDIR) || !strings.Contains(err.Error(), file) {
		t.Errorf("Open under a file = %v, want ErrIO wrapping ENOTDIR naming %s", err, file)
	}

	s := openStore(t, base)
	a := owner("a")
	reserve(t, s, a, "10.0.0.2")
	// A directory where 10.0.0.2's file should be cannot be read.
	if err := os.Remove(s.ipPath(ip("10.0.0.2"))); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(s.ipPath(ip("10.0.0.2")), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(a); !errors.Is(err, ErrIO) || !errors.Is(err, unix.EISDIR) {
		t.Errorf("Release = %v, want ErrIO wrapping EISDIR", err)
	}
	if _, ok := s.Addresses(a); !ok {
		t.Error("a failed Release dropped the index: the address would be forgotten")
	}
	if ok, err := s.Reserve(ip("10.0.0.2"), owner("b")); ok || err != nil {
		t.Errorf("Reserve over the unreadable address = %v, %v, want false", ok, err)
	}
	if _, err := s.Scan(); err != nil {
		t.Errorf("Scan: %v: a directory is not an allocation", err)
	}
}

// TestConcurrentAllocators: goroutines that each open the store (and so
// take its lock) and allocate never get the same address.
func TestConcurrentAllocators(t *testing.T) {
	dir := t.TempDir()
	set := mustSet(t, `[{"subnet":"10.0.0.0/26"}]`)
	const workers, each = 8, 7 // 56 of 61 addresses
	got := make(chan string, workers*each)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ipn, err := allocate(dir, set, owner(fmt.Sprintf("w%d-%d", w, i)))
				if err != nil {
					t.Error(err)
					return
				}
				got <- ipn
			}
		}()
	}
	wg.Wait()
	close(got)
	var all []string
	for a := range got {
		all = append(all, a)
	}
	checkDistinct(t, all, workers*each)
}

// allocate is one ADD: open (lock), allocate, write the index, close.
func allocate(dir string, set RangeSet, o Owner) (string, error) {
	s, err := Open(dir, "net")
	if err != nil {
		return "", err
	}
	defer s.Close()
	held, _ := s.Addresses(o)
	ipn, _, err := (&Allocator{Set: set, Store: s}).Get(o, nil, held)
	if err != nil {
		return "", fmt.Errorf("allocate for %v: %w", o, err)
	}
	if err := s.SetAddresses(o, appendNew(held, ipn.IP)); err != nil {
		return "", err
	}
	return ipn.IP.String(), nil
}

func checkDistinct(t *testing.T, ips []string, n int) {
	t.Helper()
	seen := map[string]bool{}
	for _, a := range ips {
		if seen[a] {
			t.Errorf("%s allocated twice", a)
		}
		seen[a] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct addresses, want %d", len(seen), n)
	}
}

const childEnv = "PODNET_IPAM_TEST_CHILD"

// TestChild is a process of the multi-process tests (child starts it): "alloc <dir> <n>"
// allocates n addresses and prints them, "hold <dir>" opens the store,
// says "locked" and waits to be killed.
func TestChild(t *testing.T) {
	args := strings.Fields(os.Getenv(childEnv))
	if len(args) < 2 {
		t.Skip("run by TestConcurrentProcesses and TestKilledHolderReleasesLock")
	}
	set := mustSet(t, `[{"subnet":"10.0.0.0/26"}]`)
	switch args[0] {
	case "alloc":
		n, _ := strconv.Atoi(args[2])
		for i := range n {
			a, err := allocate(args[1], set, owner(fmt.Sprintf("p%d-%d", os.Getpid(), i)))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Println("ip", a)
		}
	case "hold":
		if _, err := Open(args[1], "net"); err != nil {
			t.Fatal(err)
		}
		fmt.Println("locked")
		select {}
	}
}

func child(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(args, " "))
	return cmd
}

// TestConcurrentProcesses: processes allocating from one store at once,
// as plugins run by a runtime do, never get the same address.
func TestConcurrentProcesses(t *testing.T) {
	dir := t.TempDir()
	const procs, each = 4, 12
	outs := make([][]byte, procs)
	var wg sync.WaitGroup
	for p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := child("alloc", dir, strconv.Itoa(each)).Output()
			if err != nil {
				t.Errorf("child %d: %v\n%s", p, err, out)
			}
			outs[p] = out
		}()
	}
	wg.Wait()
	var all []string
	for _, out := range outs {
		for _, line := range strings.Split(string(out), "\n") {
			if a, ok := strings.CutPrefix(line, "ip "); ok {
				all = append(all, a)
			}
		}
	}
	checkDistinct(t, all, procs*each)
	s := openStore(t, dir)
	if m, err := s.Scan(); err != nil || len(m) != procs*each {
		t.Errorf("store holds %d allocations (%v), want %d", len(m), err, procs*each)
	}
}

// TestKilledHolderReleasesLock: the lock of a process killed while it
// holds the store is released by the kernel, so the next plugin does not
// wait for it.
func TestKilledHolderReleasesLock(t *testing.T) {
	dir := t.TempDir()
	cmd := child("hold", dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "locked" {
	}
	if sc.Err() != nil {
		t.Fatal(sc.Err())
	}

	// The child holds the lock: a non-blocking try fails.
	f, err := os.Open(filepath.Join(dir, "net", "lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatalf("lock while another process holds the store: %v, want EWOULDBLOCK", err)
	}
	opened := make(chan error, 1)
	go func() {
		s, err := Open(dir, "net")
		if err == nil {
			s.Close()
		}
		opened <- err
	}()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Open still waits for the lock of a killed process")
	}
}
