package chcluster

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// zkProxy forwards one node's ZooKeeper connections (StartWith with
// Options.ZooKeeperProxy) so that a test can silence the link: while
// silent, bytes in both directions are dropped and the TCP connections
// stay open, as when packets are lost on the way (no reset, no FIN). The
// node notices only when its session times out.
//
// Owned by the Cluster: stop closes the listener and every connection and
// waits for the accept loop and the copy goroutines.
type zkProxy struct {
	ln     net.Listener
	target string
	silent atomic.Bool

	mu     sync.Mutex
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

func newZKProxy(target string) (*zkProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("zookeeper proxy: %w", err)
	}
	p := &zkProxy{ln: ln, target: target}
	p.wg.Go(p.accept)
	return p, nil
}

func (p *zkProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *zkProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed by stop
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			u.Close()
			return
		}
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		// Each direction closes both ends when it ends, so the other
		// ends too (a node that reconnects leaves no idle pair behind).
		p.wg.Go(func() { p.pipe(u, c); u.Close(); c.Close() })
		p.wg.Go(func() { p.pipe(c, u); c.Close(); u.Close() })
	}
}

// pipe copies src to dst, dropping what it reads while the link is silent.
func (p *zkProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.silent.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *zkProxy) stop() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}
