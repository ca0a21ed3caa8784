package ipam

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultDir is where allocations live unless a configuration says
// otherwise: under /run, so they die with the boot, as the pods do.
const DefaultDir = "/run/podnet/ipam"

// Owner is the attachment an address is allocated to.
type Owner struct {
	ContainerID string
	IfName      string
}

// indexName is the file under attachments/ that lists an owner's
// addresses. Container IDs never contain '@' (the spec restricts them to
// [a-zA-Z0-9_.-]), so the first '@' separates the two parts.
func (o Owner) indexName() string { return o.ContainerID + "@" + o.IfName }

// Store keeps one network's allocations in a directory:
//
//	lock                    flock(2)ed for every operation; the kernel drops
//	                        the lock of a killed process, so none goes stale
//	<ip>                    one file per allocated address holding
//	                        "containerID\r\nifname" (the reference's format);
//	                        it appears atomically, with its content, through
//	                        link(2), so an address is allocated iff its file
//	                        exists and is never handed out twice
//	last_reserved_ip.<n>    where range set n's round-robin resumes
//	attachments/<id>@<if>   the owner's addresses, written (temp + rename)
//	                        after its address files, so DEL reads one file
//	                        instead of walking the directory
//
// A process killed between an address file and its index leaves an
// address the index does not list: DEL without an index falls back to a
// scan, and GC (which scans) releases whatever no valid attachment owns.
// State under /run lives in memory, so no fsync is needed for a process
// crash; a machine crash clears it together with the pods.
type Store struct {
	dir  string
	lock *os.File
}

// Open opens (creating if needed) the store of a network under base
// (DefaultDir when empty) and takes its lock.
func Open(base, network string) (*Store, error) {
	if base == "" {
		base = DefaultDir
	}
	dir := filepath.Join(base, network)
	if err := os.MkdirAll(filepath.Join(dir, "attachments"), 0o755); err != nil {
		return nil, ioFailure(fmt.Errorf("create IPAM store %s: %w", dir, err))
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, ioFailure(fmt.Errorf("open IPAM lock: %w", err))
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, ioFailure(fmt.Errorf("lock IPAM store %s: %w", dir, err))
	}
	return &Store{dir: dir, lock: f}, nil
}

// ErrIO is wrapped by every error of the store's file system (permissions,
// a read-only or full file system, a file where a directory should be);
// the error names the path and wraps the cause too.
var ErrIO = errors.New("IPAM store I/O failure")

// ioFailure marks err as a failure of the store's file system (ErrIO).
// nil stays nil.
func ioFailure(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrIO, err)
}

// Close releases the lock.
func (s *Store) Close() error { return s.lock.Close() }

func (s *Store) ipPath(ip net.IP) string { return filepath.Join(s.dir, ip.String()) }

// Reserve allocates ip to owner; false when it is already allocated.
func (s *Store) Reserve(ip net.IP, o Owner) (bool, error) {
	tmp, err := os.CreateTemp(s.dir, ".new-")
	if err != nil {
		return false, ioFailure(fmt.Errorf("reserve %s: %w", ip, err))
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(o.ContainerID + "\r\n" + o.IfName)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return false, ioFailure(fmt.Errorf("reserve %s: %w", ip, werr))
	}
	if err := os.Link(tmp.Name(), s.ipPath(ip)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, ioFailure(fmt.Errorf("reserve %s: %w", ip, err))
	}
	return true, nil
}

// Allocated tells whether ip is allocated.
func (s *Store) Allocated(ip net.IP) bool {
	_, err := os.Lstat(s.ipPath(ip))
	return err == nil
}

// OwnerOf returns who holds ip.
func (s *Store) OwnerOf(ip net.IP) (Owner, bool) {
	o, ok, _ := s.readOwner(ip)
	return o, ok
}

// readOwner is OwnerOf telling a file that cannot be read (an I/O
// failure) from one that is gone or holds no owner: the former must not
// be taken for a free or ownerless address.
func (s *Store) readOwner(ip net.IP) (Owner, bool, error) {
	b, err := os.ReadFile(s.ipPath(ip))
	if errors.Is(err, fs.ErrNotExist) {
		return Owner{}, false, nil
	}
	if err != nil {
		return Owner{}, false, ioFailure(fmt.Errorf("read owner of %s: %w", ip, err))
	}
	o, ok := parseOwner(string(b))
	return o, ok, nil
}

func parseOwner(s string) (Owner, bool) {
	id, ifname, ok := strings.Cut(strings.TrimSpace(s), "\r\n")
	if !ok {
		// Files written by the reference before it recorded ifnames.
		id, ifname, ok = strings.Cut(strings.TrimSpace(s), "\n")
	}
	if !ok || id == "" || ifname == "" {
		return Owner{}, false
	}
	return Owner{ContainerID: strings.TrimSpace(id), IfName: strings.TrimSpace(ifname)}, true
}

// LastReserved returns where range set n's round-robin stopped.
func (s *Store) LastReserved(n int) net.IP {
	b, err := os.ReadFile(filepath.Join(s.dir, "last_reserved_ip."+strconv.Itoa(n)))
	if err != nil {
		return nil
	}
	ip := net.ParseIP(strings.TrimSpace(string(b)))
	if ip == nil {
		return nil
	}
	c, _ := Canonical(ip)
	return c
}

// SetLastReserved records where range set n's round-robin stopped.
func (s *Store) SetLastReserved(n int, ip net.IP) error {
	p := filepath.Join(s.dir, "last_reserved_ip."+strconv.Itoa(n))
	if err := os.WriteFile(p, []byte(ip.String()), 0o644); err != nil {
		return ioFailure(fmt.Errorf("record last reserved IP: %w", err))
	}
	return nil
}

// Addresses returns the addresses the owner's index lists, and whether an
// index exists.
func (s *Store) Addresses(o Owner) ([]net.IP, bool) {
	ips, ok, _ := s.readIndex(o)
	return ips, ok
}

// readIndex reads the owner's index: the addresses it lists, whether it
// exists, and whether it is well formed (at least one address, nothing
// but addresses), as SetAddresses writes it.
func (s *Store) readIndex(o Owner) (ips []net.IP, exists, wellFormed bool) {
	f, err := os.Open(filepath.Join(s.dir, "attachments", o.indexName()))
	if err != nil {
		return nil, false, false
	}
	defer f.Close()
	wellFormed = true
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		ip := net.ParseIP(strings.TrimSpace(sc.Text()))
		if ip == nil {
			wellFormed = false
			continue
		}
		c, _ := Canonical(ip)
		ips = append(ips, c)
	}
	return ips, true, wellFormed && sc.Err() == nil && len(ips) > 0
}

// SetAddresses writes the owner's index atomically.
func (s *Store) SetAddresses(o Owner, ips []net.IP) error {
	var b strings.Builder
	for _, ip := range ips {
		b.WriteString(ip.String())
		b.WriteByte('\n')
	}
	p := filepath.Join(s.dir, "attachments", o.indexName())
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return ioFailure(fmt.Errorf("write allocation index: %w", err))
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return ioFailure(fmt.Errorf("write allocation index: %w", err))
	}
	return nil
}

// Release frees every address of the owner: those its index lists, and,
// when the index is missing (a crash before it was written), malformed
// or lists an address the owner does not hold (corrupt, or a release
// interrupted before), those a scan finds. Releasing nothing is no error.
func (s *Store) Release(o Owner) error {
	ips, exists, wellFormed := s.readIndex(o)
	scan := !exists || !wellFormed
	var errs []error
	release := func(ip net.IP) {
		if err := os.Remove(s.ipPath(ip)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("release %s: %w", ip, err))
		}
	}
	for _, ip := range ips {
		owner, held, err := s.readOwner(ip)
		switch {
		case err != nil:
			errs = append(errs, err)
		case held && owner == o:
			release(ip)
		default:
			scan = true
		}
	}
	if scan {
		all, err := s.Scan()
		if err != nil {
			return ioFailure(errors.Join(append(errs, err)...))
		}
		for ip, owner := range all {
			if owner == o {
				release(net.ParseIP(ip))
			}
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(filepath.Join(s.dir, "attachments", o.indexName())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove allocation index: %w", err))
		}
	}
	return ioFailure(errors.Join(errs...))
}

// Scan reads every allocation: address (as text) to owner. Files that
// hold no owner map to the zero Owner; a file that cannot be read fails
// the scan, so that GC never releases an address it could not check.
func (s *Store) Scan() (map[string]Owner, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, ioFailure(fmt.Errorf("read IPAM store: %w", err))
	}
	out := map[string]Owner{}
	for _, e := range entries {
		ip := net.ParseIP(e.Name())
		if ip == nil || !e.Type().IsRegular() {
			continue
		}
		o, _, err := s.readOwner(ip)
		if err != nil {
			return nil, err
		}
		out[ip.String()] = o
	}
	return out, nil
}

// GC releases every allocation whose owner keep rejects, with the indexes
// of those owners and leftovers of interrupted writes.
func (s *Store) GC(keep func(Owner) bool) error {
	all, err := s.Scan()
	if err != nil {
		return err
	}
	var errs []error
	for ip, o := range all {
		if o != (Owner{}) && keep(o) {
			continue
		}
		if err := os.Remove(filepath.Join(s.dir, ip)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("release %s: %w", ip, err))
		}
	}
	for _, sub := range []string{"", "attachments"} {
		entries, err := os.ReadDir(filepath.Join(s.dir, sub))
		if err != nil {
			errs = append(errs, fmt.Errorf("read IPAM store: %w", err))
			continue
		}
		for _, e := range entries {
			name := e.Name()
			drop := strings.HasPrefix(name, ".new-") || strings.HasSuffix(name, ".tmp")
			if sub == "attachments" && !drop {
				id, ifname, _ := strings.Cut(name, "@")
				drop = !keep(Owner{ContainerID: id, IfName: ifname})
			}
			if drop {
				if err := os.Remove(filepath.Join(s.dir, sub, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, err)
				}
			}
		}
	}
	return ioFailure(errors.Join(errs...))
}

// Unreserve frees one address.
func (s *Store) Unreserve(ip net.IP) error {
	if err := os.Remove(s.ipPath(ip)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return ioFailure(fmt.Errorf("release %s: %w", ip, err))
	}
	return nil
}
