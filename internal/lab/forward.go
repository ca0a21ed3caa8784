package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/netns"
)

// startForwarder starts `podnet lab forward` on a free port of the
// machine's loopback, serving the API server, and writes Kubeconfig for
// it. The listener is made here and handed over, so the port is known
// and taken before the forwarder runs.
func (l *Lab) startForwarder() error {
	ks := l.Kube
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("forwarder: %w", err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return fmt.Errorf("forwarder: %w", err)
	}
	defer f.Close()
	logf, err := os.OpenFile(filepath.Join(l.Dir, "forward.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	target := net.JoinHostPort(ks.IP, strconv.Itoa(kube.APIServerPort))
	cmd := exec.Command(l.Bins.CLI, "lab", "forward", "--listen-fd", "3",
		"--netns", forwarderNetNS(l.Name), "--to", target)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start forwarder: %w", err)
	}
	go func() { _ = cmd.Wait() }() // reap it if it dies while we run
	port := ln.Addr().(*net.TCPAddr).Port
	if err := l.update(func() { ks.Port = port }); err != nil {
		return err
	}
	return l.writeKubeconfig()
}

// forwarderNetNS is the forwarder's --netns argument: the control plane's
// namespace. Down finds the forwarder by it (kube.ProcsWithArg), also one
// started by a lab killed before it recorded anything more.
func forwarderNetNS(lab string) string {
	return filepath.Join(netns.RunDir, "pl-"+lab+"-"+cpRole)
}

// writeKubeconfig writes Kubeconfig: the administrator's, its server the
// forwarder (the API server's certificate holds 127.0.0.1).
func (l *Lab) writeKubeconfig() error {
	cp, err := l.ControlPlane()
	if err != nil {
		return err
	}
	cfg, err := clientcmd.LoadFromFile(cp.AdminKubeconfig())
	if err != nil {
		return fmt.Errorf("lab kubeconfig: %w", err)
	}
	for _, c := range cfg.Clusters {
		c.Server = "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Kube.Port))
	}
	if err := clientcmd.WriteToFile(*cfg, l.Kubeconfig()); err != nil {
		return fmt.Errorf("lab kubeconfig: %w", err)
	}
	return nil
}

// Forward serves ln, joining each connection to one made to target inside
// the network namespace at nsPath, until ctx ends (podnet lab forward:
// the lab's API server on the machine's loopback).
func Forward(ctx context.Context, ln net.Listener, nsPath, target string) error {
	ns, err := netns.Open(nsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("forward: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			var up net.Conn
			err := ns.Do(func() error {
				var err error
				up, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", target)
				return err
			})
			if err != nil {
				fmt.Fprintf(os.Stderr, "forward %s: %v\n", c.RemoteAddr(), err)
				return
			}
			defer up.Close()
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(up, c)
				closeWrite(up)
				close(done)
			}()
			_, _ = io.Copy(c, up)
			closeWrite(c)
			<-done
		}()
	}
}

// closeWrite half-closes a TCP connection: the peer reads EOF.
func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
