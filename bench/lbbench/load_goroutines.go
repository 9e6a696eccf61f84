package lbbench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// startGoroutines opens the sockets and starts one goroutine per socket.
func (r *loadRun) startGoroutines() (func() []*loadStats, error) {
	conns := make([]*net.UDPConn, 0, r.Clients)
	dst := net.UDPAddrFromAddrPort(r.Target)
	for i := range r.Clients {
		c, err := net.DialUDP("udp4", nil, dst)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("load: socket %d: %w", i+1, err)
		}
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	stats := make([]*loadStats, len(conns))
	for i, c := range conns {
		st := new(loadStats)
		stats[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			r.driveConn(c, st)
		}()
	}
	return joinStats(&wg, stats), nil
}

// driveConn keeps one socket's window full until the run ends.
func (r *loadRun) driveConn(c *net.UDPConn, st *loadStats) {
	f := newFlow(r.Window)
	tx := make([][]byte, r.Window)
	for i := range tx {
		tx[i] = make([]byte, r.Size)
	}
	rx := make([]byte, maxDatagram)
	fill := func(now int64, phase int32) {
		n := f.prepare(r, tx)
		sent := 0
		for ; sent < n; sent++ {
			if _, err := c.Write(tx[sent]); err != nil {
				st.errors++
				break
			}
		}
		f.commit(st, sent, now, phase)
	}
	fill(r.now(), r.phase.Load())
	poll := min(r.LossTimeout/4, epollWaitMillis*time.Millisecond)
	scanEvery := max(int64(r.LossTimeout)/4, 1)
	nextScan := r.now() + scanEvery
	for {
		phase := r.phase.Load()
		if phase == phaseAbort || (phase == phaseDrain && f.out == 0) {
			return
		}
		// A short deadline lets the goroutine notice phase changes and
		// losses; it costs a timer update per read.
		if err := c.SetReadDeadline(time.Now().Add(poll)); err != nil {
			st.errors++
			return
		}
		n, err := c.Read(rx)
		now := r.now()
		switch {
		case err == nil:
			f.answer(r, st, rx[:n], now, phase)
		case errors.Is(err, os.ErrDeadlineExceeded):
		default:
			st.errors++
		}
		if now >= nextScan {
			nextScan = now + scanEvery
			f.expire(st, now-int64(r.LossTimeout))
		}
		if phase < phaseDrain {
			fill(now, phase)
		}
	}
}
