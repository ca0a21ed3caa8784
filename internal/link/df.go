package link

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// DontFragment sets Don't Fragment on an IPv4 socket's packets
// (IP_PMTUDISC_DO): a datagram larger than the path MTU fails with
// EMSGSIZE instead of being fragmented. Tests and benchmarks use it to
// prove a path has no MTU black hole.
func DontFragment(c syscall.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set don't fragment: %w", serr)
	}
	return nil
}
