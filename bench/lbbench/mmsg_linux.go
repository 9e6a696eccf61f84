package lbbench

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgBatch is a reusable vector of single-buffer messages for recvmmsg and
// sendmmsg on connected sockets (no addresses, no control data).
type mmsgBatch struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
	bufs [][]byte
}

// newMmsgBatch returns a batch of n messages with buffers of size bytes.
func newMmsgBatch(n, size int) *mmsgBatch {
	b := &mmsgBatch{
		hdrs: make([]unix.Mmsghdr, n),
		iovs: make([]unix.Iovec, n),
		bufs: make([][]byte, n),
	}
	for i := range n {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.SetIovlen(1)
	}
	return b
}

// setLen sets the length sent from message i's buffer.
func (b *mmsgBatch) setLen(i, n int) { b.iovs[i].SetLen(n) }

// recv receives up to n datagrams on the non-blocking connected socket fd
// into the batch's buffers and returns how many arrived; the length of
// datagram i is b.hdrs[i].Len. It returns unix.EAGAIN when none is queued.
func (b *mmsgBatch) recv(fd, n int) (int, error) {
	r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd),
		uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(n), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// send sends the first n messages of the batch on the non-blocking
// connected socket fd and returns how many were sent.
func (b *mmsgBatch) send(fd, n int) (int, error) {
	r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd),
		uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(n), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}
