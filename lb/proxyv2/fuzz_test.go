package proxyv2

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

func FuzzParse(f *testing.F) {
	f.Add(AppendHeader(nil, Proxy, client4, vip4))
	f.Add(append(AppendHeader(nil, Proxy, client6, vip6), "payload"...))
	f.Add(AppendHeader(nil, Local, client4, vip4))
	f.Add(withLen(AppendHeader(nil, Proxy, client4, vip4), []byte{4, 0, 1, 0}, 0))
	f.Add([]byte("\x40\x01\x12\x34"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, payload, err := Parse(b)
		if err != nil {
			if h != (Header{}) || payload != nil {
				t.Fatal("non-zero results with an error")
			}
			return
		}
		hlen := len(b) - len(payload)
		if hlen < FixedLen || !bytes.Equal(b[hlen:], payload) || hlen != FixedLen+int(binary.BigEndian.Uint16(b[14:16])) {
			t.Fatalf("payload at %d of %d bytes", hlen, len(b))
		}
		// Re-encoding the header round-trips.
		again := AppendHeader(nil, h.Command, h.Src, h.Dst)
		h2, p2, err := Parse(append(again, payload...))
		if err != nil || h2 != h || !bytes.Equal(p2, payload) {
			t.Fatalf("round trip: %+v -> %x -> %+v, %v", h, again, h2, err)
		}
		// go-proxyproto accepts what we accept (up to its header size
		// limit) and reads the same addresses.
		if hlen-FixedLen > int(proxyproto.MaxV2HeaderSize) {
			return
		}
		ref, rp, err := proxyproto.ParseUDPDatagram(b)
		if err != nil {
			t.Fatalf("go-proxyproto rejects %x: %v", b, err)
		}
		if !bytes.Equal(rp, payload) {
			t.Fatalf("go-proxyproto payload %x, ours %x", rp, payload)
		}
		if h.Command == Local {
			if !ref.Command.IsLocal() {
				t.Fatalf("go-proxyproto command %v", ref.Command)
			}
			return
		}
		src, _ := ref.SourceAddr.(interface{ AddrPort() netip.AddrPort })
		dst, _ := ref.DestinationAddr.(interface{ AddrPort() netip.AddrPort })
		if src == nil || dst == nil {
			t.Fatalf("go-proxyproto addresses %T, %T", ref.SourceAddr, ref.DestinationAddr)
		}
		unmap := func(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) }
		if unmap(src.AddrPort()) != unmap(h.Src) || unmap(dst.AddrPort()) != unmap(h.Dst) {
			t.Fatalf("go-proxyproto %v->%v, ours %v->%v", src.AddrPort(), dst.AddrPort(), h.Src, h.Dst)
		}
	})
}
