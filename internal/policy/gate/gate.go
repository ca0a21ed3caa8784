// Package gate is the pod gate of network policy: during a pod's CNI ADD
// the plugin tells the node agent the pod's addresses (Notify) and waits
// until the agent has the pod's policy in the kernel (Serve's handler
// returns), so that the runtime starts no container of a pod whose policy
// is not enforced yet.
//
// The protocol is one request and one response per connection on a unix
// socket that only root may use: the plugin writes the pod as one JSON
// line, the agent answers one JSON line, {} or {"error": "…"}. Both are
// bounded in size and time. The gate is a speed-up, not the guarantee:
// with no agent listening Notify returns at once, and the data plane's
// fail-closed drop of addresses that are no known pod's protects the pod
// until the agent catches up from the Pod object.
//
// The package is imported by the plugin binary and so depends on the
// standard library alone.
package gate

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// DefaultSocket is where the agent listens.
const DefaultSocket = "/run/podnet/policy.sock"

const (
	// maxMessage bounds a request or a response line, newline included:
	// a pod's names (at most 253 bytes each), its UID and its addresses
	// fit many times over.
	maxMessage = 4096
	// maxError bounds the agent's error message in a response, so that
	// even escaped as JSON (at most 6 bytes a byte) it fits maxMessage.
	maxError = 512
	// maxName bounds a namespace or a pod name (a DNS subdomain).
	maxName = 253
	// requestTimeout bounds the time a client takes to send its request.
	requestTimeout = 5 * time.Second
	// responseTimeout bounds the writing of the agent's answer.
	responseTimeout = 5 * time.Second
)

// Pod is what the plugin tells the agent of a new pod.
type Pod struct {
	// Namespace and Name name the pod (both required).
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID is the pod's metadata.uid, when the runtime gives it.
	UID string `json:"uid,omitempty"`
	// IPs are the addresses ADD gave the pod (at least one).
	IPs []netip.Addr `json:"ips"`
}

// Validate checks that p names its namespace and itself and has at least
// one address, each a valid unzoned IP address.
func (p Pod) Validate() error {
	for _, f := range []struct{ field, v string }{{"namespace", p.Namespace}, {"name", p.Name}} {
		if f.v == "" {
			return fmt.Errorf("pod has no %s", f.field)
		}
		if len(f.v) > maxName {
			return fmt.Errorf("pod %s is %d bytes long, at most %d", f.field, len(f.v), maxName)
		}
	}
	if len(p.IPs) == 0 {
		return fmt.Errorf("pod %s/%s has no IP address", p.Namespace, p.Name)
	}
	for _, ip := range p.IPs {
		if !ip.IsValid() || ip.Zone() != "" {
			return fmt.Errorf("pod %s/%s: invalid IP address %q", p.Namespace, p.Name, ip.String())
		}
	}
	return nil
}

// response is the agent's answer: no error when the pod's policy is in
// the kernel.
type response struct {
	Error string `json:"error,omitempty"`
}

// Serve answers on a unix socket at path (mode 0600, replaced if stale)
// until ctx ends; each request is handled by handle, concurrently, and the
// plugin's Notify returns handle's error. handle's context ends when ctx
// does or when the plugin hangs up. A socket at path that another process
// still answers on is an error, as is any other kind of file there. Serve
// removes its socket and waits for the handlers before it returns.
func Serve(ctx context.Context, path string, handle func(context.Context, Pod) error) error {
	l, err := listen(path)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer l.remove()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("policy gate %s: accept: %w", path, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveConn(ctx, c, handle)
		}()
	}
}

// listener is the gate's socket, with what identifies its file.
type listener struct {
	*net.UnixListener
	path string
	file os.FileInfo
}

// listen binds a socket under a temporary name in path's directory,
// restricts it to its owner and renames it over path, so that the socket
// at path is never more open than 0600 and a stale one is replaced
// atomically.
func listen(path string) (*listener, error) {
	if err := checkStale(path); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("policy gate: create %s: %w", dir, err)
	}
	var suffix [6]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return nil, fmt.Errorf("policy gate: %w", err)
	}
	tmp := filepath.Join(dir, "."+filepath.Base(path)+"."+hex.EncodeToString(suffix[:]))
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("policy gate: listen on %s: %w", tmp, err)
	}
	ul.SetUnlinkOnClose(false)
	l := &listener{UnixListener: ul, path: path}
	fail := func(err error) (*listener, error) {
		ul.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("policy gate %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if l.file, err = os.Stat(tmp); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return l, nil
}

// checkStale refuses a path that is not a socket, or a socket some
// process answers on; a socket nobody answers on is stale.
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("policy gate: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("policy gate: %s exists and is not a socket (%s)", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("policy gate: another process answers on %s", path)
	}
	if absent(err) {
		return nil
	}
	return fmt.Errorf("policy gate: probe %s: %w", path, err)
}

// remove closes the listener and removes its socket, unless another
// process has replaced it since.
func (l *listener) remove() {
	l.Close()
	if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.file) {
		os.Remove(l.path)
	}
}

// serveConn reads one request from c, hands it to handle and writes the
// answer. The handler's context ends when ctx does or when the client
// hangs up or sends anything more.
func serveConn(ctx context.Context, c net.Conn, handle func(context.Context, Pod) error) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(requestTimeout))
	br := bufio.NewReaderSize(c, maxMessage)
	p, err := readRequest(br)
	if err != nil {
		writeResponse(c, err)
		return
	}
	if br.Buffered() > 0 {
		writeResponse(c, errors.New("bad request: data after the request"))
		return
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.SetReadDeadline(time.Time{})
	go func() {
		var b [1]byte
		c.Read(b[:])
		cancel()
	}()
	writeResponse(c, handle(hctx, p))
}

// readRequest reads and validates one request line.
func readRequest(br *bufio.Reader) (Pod, error) {
	line, err := readLine(br)
	if err != nil {
		return Pod{}, fmt.Errorf("bad request: %w", err)
	}
	var p Pod
	if err := json.Unmarshal(line, &p); err != nil {
		return Pod{}, fmt.Errorf("bad request: %w", err)
	}
	if err := p.Validate(); err != nil {
		return Pod{}, fmt.Errorf("bad request: %w", err)
	}
	return p, nil
}

// readLine reads one line of at most maxMessage bytes from br (whose
// buffer is that size).
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, fmt.Errorf("message longer than %d bytes", maxMessage)
	case errors.Is(err, io.EOF) && len(line) > 0:
		return nil, errors.New("message not terminated by a newline")
	case err != nil:
		return nil, err
	}
	return line, nil
}

// writeResponse answers err (nil: the pod's policy is in place).
func writeResponse(c net.Conn, err error) {
	var r response
	if err != nil {
		r.Error = err.Error()
		if len(r.Error) > maxError {
			r.Error = r.Error[:maxError] + "…"
		}
	}
	b, _ := json.Marshal(r)
	c.SetWriteDeadline(time.Now().Add(responseTimeout))
	c.Write(append(b, '\n'))
}

// Notify tells the agent listening on path about p and waits for its
// answer (bounded by ctx); with no agent listening (no socket, connection
// refused) it returns nil at once: the kernel's fail-closed drop still
// protects. The agent's refusal, a bad answer or ctx ending first are
// errors.
func Notify(ctx context.Context, path string, p Pod) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("policy gate: %w", err)
	}
	req, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("policy gate: %w", err)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if absent(err) {
			return nil
		}
		return fmt.Errorf("policy gate %s: %w", path, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	fail := func(err error) error {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return fmt.Errorf("policy gate %s: pod %s/%s: %w", path, p.Namespace, p.Name, err)
	}
	if _, err := c.Write(append(req, '\n')); err != nil {
		return fail(fmt.Errorf("send: %w", err))
	}
	line, err := readLine(bufio.NewReaderSize(c, maxMessage))
	if err != nil {
		return fail(fmt.Errorf("no answer from the agent: %w", err))
	}
	var r response
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return fail(fmt.Errorf("bad answer from the agent: %w", err))
	}
	if r.Error != "" {
		return fail(fmt.Errorf("agent: %s", r.Error))
	}
	return nil
}

// absent tells whether a dial error means nobody listens: no socket file,
// or a socket nobody answers on.
func absent(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}
