package lbbench

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// epollWorker drives a share of the client sockets from one goroutine.
type epollWorker struct {
	r     *loadRun
	epfd  int
	fds   []int
	flows []flow
	rx    *mmsgBatch
	tx    *mmsgBatch
	st    loadStats
}

// epollWaitMillis bounds how long a worker sleeps in epoll_wait, so that
// it notices phase changes and expires lost datagrams.
const epollWaitMillis = 10

// startEpoll opens the sockets and starts the workers.
func (r *loadRun) startEpoll() (func() []*loadStats, error) {
	ws := make([]*epollWorker, r.Workers)
	closeAll := func() {
		for _, w := range ws {
			if w != nil {
				w.close()
			}
		}
	}
	for i := range ws {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("load: epoll_create1: %w", err)
		}
		ws[i] = &epollWorker{
			r:    r,
			epfd: epfd,
			rx:   newMmsgBatch(r.Window, maxDatagram),
			tx:   newMmsgBatch(r.Window, r.Size),
		}
	}
	dst := &unix.SockaddrInet4{Port: int(r.Target.Port()), Addr: r.Target.Addr().As4()}
	for i := range r.Clients {
		w := ws[i%len(ws)]
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("load: socket %d: %w", i+1, err)
		}
		// connect(2) binds the socket to a port of its own and makes the
		// kernel drop datagrams from anyone but the target.
		if err := unix.Connect(fd, dst); err != nil {
			unix.Close(fd)
			closeAll()
			return nil, fmt.Errorf("load: connecting socket %d to %v: %w", i+1, r.Target, err)
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(len(w.fds))}
		if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			unix.Close(fd)
			closeAll()
			return nil, fmt.Errorf("load: epoll_ctl: %w", err)
		}
		w.fds = append(w.fds, fd)
		w.flows = append(w.flows, newFlow(r.Window))
	}
	var wg sync.WaitGroup
	stats := make([]*loadStats, len(ws))
	for i, w := range ws {
		stats[i] = &w.st
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.close()
			w.run()
		}()
	}
	return joinStats(&wg, stats), nil
}

func (w *epollWorker) close() {
	for _, fd := range w.fds {
		unix.Close(fd)
	}
	w.fds = nil
	if w.epfd >= 0 {
		unix.Close(w.epfd)
		w.epfd = -1
	}
}

// run is the worker's loop.
func (w *epollWorker) run() {
	events := make([]unix.EpollEvent, 256)
	phase := w.r.phase.Load()
	for i := range w.fds {
		w.fill(i, w.r.now(), phase)
	}
	scanEvery := max(int64(w.r.LossTimeout)/4, 1)
	nextScan := w.r.now() + scanEvery
	for {
		phase = w.r.phase.Load()
		if phase == phaseAbort || (phase == phaseDrain && w.st.outstanding == 0) {
			return
		}
		n, err := unix.EpollWait(w.epfd, events, epollWaitMillis)
		if err != nil && !errors.Is(err, unix.EINTR) {
			w.st.errors++
			return
		}
		for _, ev := range events[:max(n, 0)] {
			w.readable(int(ev.Fd), phase)
		}
		if now := w.r.now(); now >= nextScan {
			nextScan = now + scanEvery
			w.expire(now, phase)
		}
	}
}

// readable receives what socket i has queued and refills its window.
func (w *epollWorker) readable(i int, phase int32) {
	f := &w.flows[i]
	n, err := w.rx.recv(w.fds[i], len(f.slots))
	if err != nil {
		if err != unix.EAGAIN {
			w.st.errors++ // ECONNREFUSED after an ICMP error, for one
		}
		return
	}
	now := w.r.now()
	for j := range n {
		f.answer(w.r, &w.st, w.rx.bufs[j][:w.rx.hdrs[j].Len], now, phase)
	}
	if phase < phaseDrain {
		w.fill(i, now, phase)
	}
}

// fill sends on socket i the datagrams its window has room for.
func (w *epollWorker) fill(i int, now int64, phase int32) {
	f := &w.flows[i]
	n := f.prepare(w.r, w.tx.bufs)
	if n == 0 {
		return
	}
	sent, err := w.tx.send(w.fds[i], n)
	if err != nil && err != unix.EAGAIN && err != unix.ENOBUFS {
		w.st.errors++
	}
	f.commit(&w.st, sent, now, phase)
}

// expire counts the datagrams outstanding for too long as lost and refills
// the windows with room (after a loss or a failed send).
func (w *epollWorker) expire(now int64, phase int32) {
	deadline := now - int64(w.r.LossTimeout)
	for i := range w.flows {
		f := &w.flows[i]
		f.expire(&w.st, deadline)
		if phase < phaseDrain && f.out < len(f.slots) {
			w.fill(i, now, phase)
		}
	}
}
