// Package securetest runs lwm2m-server's DTLS layer (package secure on a
// package dgram listener, as --coaps does) on loopback for the tests of
// other packages, such as the balancer's.
package securetest

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/lwm2mcluster/lwm2m/backend/dgram"
	"github.com/lwm2mcluster/lwm2m/backend/secure"
)

// EchoPrefix starts every answer of an echo server.
const EchoPrefix = "echo:"

// Serve starts a DTLS server with cfg on 127.0.0.1 and returns its
// address and a function that stops it (it stops anyway when the test
// ends). Every session that completes its
// handshake is answered: each datagram comes back prefixed with EchoPrefix
// when echo is set, and is ignored otherwise.
func Serve(t testing.TB, cfg secure.Config, echo bool) (netip.AddrPort, func()) {
	t.Helper()
	layer, err := secure.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dl, err := dgram.Listen("127.0.0.1:0", dgram.Config{CIDLen: layer.CIDLen()})
	if err != nil {
		t.Fatal(err)
	}
	ln := layer.Listener(dl)
	var once sync.Once
	stop := func() { once.Do(func() { ln.Close() }) }
	t.Cleanup(stop)
	go func() {
		for {
			c, err := ln.AcceptWithContext(context.Background())
			if err != nil {
				return
			}
			go serveConn(c, echo)
		}
	}()
	return dl.Addr().(*net.UDPAddr).AddrPort(), stop
}

func serveConn(c net.Conn, echo bool) {
	defer c.Close()
	if c.(*secure.Conn).HandshakeContext(context.Background()) != nil {
		return
	}
	buf := make([]byte, 1500)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if echo {
			if _, err := c.Write(append([]byte(EchoPrefix), buf[:n]...)); err != nil {
				return
			}
		}
	}
}
