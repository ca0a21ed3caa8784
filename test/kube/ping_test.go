package kube

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/podnet/podnet/internal/netns"
)

// pinger sends ICMP echo requests from a namespace to an address at a
// fixed interval, like ping -i, and records which were answered.
type pinger struct {
	what string
	c    *icmp.PacketConn
	dst  net.IP
	id   int
	stop chan struct{}
	done sync.WaitGroup

	mu       sync.Mutex
	sent     int
	answered map[int]bool
}

// startPinger starts pinging dst from ns every interval.
func startPinger(what string, ns *netns.NS, dst net.IP, interval time.Duration) (*pinger, error) {
	var c *icmp.PacketConn
	if err := ns.Do(func() error {
		var err error
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return nil, fmt.Errorf("%s: icmp socket: %w", what, err)
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	p := &pinger{what: what, c: c, dst: dst, id: int(binary.BigEndian.Uint16(b[:])), stop: make(chan struct{}), answered: map[int]bool{}}
	p.done.Add(2)
	go p.send(interval)
	go p.receive()
	return p, nil
}

func (p *pinger) send(interval time.Duration) {
	defer p.done.Done()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: seq & 0xffff, Data: []byte("podnet-kube")}}
		wire, _ := msg.Marshal(nil)
		_, _ = p.c.WriteTo(wire, &net.IPAddr{IP: p.dst})
		p.mu.Lock()
		p.sent++
		p.mu.Unlock()
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
	}
}

func (p *pinger) receive() {
	defer p.done.Done()
	buf := make([]byte, 1500)
	for {
		n, peer, err := p.c.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if a, isIP := peer.(*net.IPAddr); !ok || e.ID != p.id || !isIP || !a.IP.Equal(p.dst) {
			continue
		}
		p.mu.Lock()
		p.answered[e.Seq] = true
		p.mu.Unlock()
	}
}

// result stops sending, waits up to a second for the last replies and
// returns how many requests were sent and which went unanswered.
func (p *pinger) result() (sent int, lost []int) {
	close(p.stop)
	deadline := time.Now().Add(time.Second)
	for {
		p.mu.Lock()
		sent, lost = p.sent, nil
		for seq := 0; seq < sent; seq++ {
			if !p.answered[seq&0xffff] {
				lost = append(lost, seq)
			}
		}
		p.mu.Unlock()
		if len(lost) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.c.Close()
	p.done.Wait()
	return sent, lost
}

// report is the pinger's outcome, and an error when a request went
// unanswered.
func (p *pinger) report() (string, error) {
	sent, lost := p.result()
	s := fmt.Sprintf("%s: %d echo requests, %d lost", p.what, sent, len(lost))
	if sent == 0 {
		return s, fmt.Errorf("%s: no echo request sent", p.what)
	}
	if len(lost) > 0 {
		return s, fmt.Errorf("%s: %d of %d echo requests unanswered (sequence numbers %v)", p.what, len(lost), sent, first(intStrings(lost), 20))
	}
	return s, nil
}

func intStrings(xs []int) []string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return s
}
