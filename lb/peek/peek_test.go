package peek

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/protocol"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
)

// cidRecord returns a tls12_cid record made by pion's record layer.
func cidRecord(t testing.TB, epoch uint16, cid []byte, body int) []byte {
	t.Helper()
	h := recordlayer.Header{
		ContentType:    protocol.ContentTypeConnectionID,
		ContentLen:     uint16(body),
		Version:        protocol.Version1_2,
		Epoch:          epoch,
		SequenceNumber: 0x0000_1234_5678_9abc,
		ConnectionID:   cid,
	}
	b, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return append(b, make([]byte, body)...)
}

func TestDTLSCID(t *testing.T) {
	cid := []byte{0xBE, 0xEF, 1, 2, 3, 4, 5, 6}
	rec := cidRecord(t, 1, cid, 40)
	set := func(i int, v byte) []byte {
		b := append([]byte(nil), rec...)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name   string
		b      []byte
		cidLen int
		ok     bool
	}{
		{"record", rec, 8, true},
		{"second record follows", append(append([]byte(nil), rec...), rec...), 8, true},
		{"empty body", cidRecord(t, 7, cid, 0), 8, true},
		{"shorter CID", cidRecord(t, 1, cid[:2], 3), 2, true},
		{"max CID", cidRecord(t, 1, append(cid, make([]byte, 247)...), 3), 255, true},
		{"nil", nil, 8, false},
		{"truncated body", rec[:len(rec)-1], 8, false},
		{"truncated header", rec[:cidOffset+8+1], 8, false},
		{"cidLen 1", cidRecord(t, 1, cid[:1], 0), 1, false},
		{"cidLen 0", rec, 0, false},
		{"cidLen negative", rec, -1, false},
		{"cidLen 256", rec, 256, false},
		{"application data", set(0, ContentApplicationData), 8, false},
		{"DTLS 1.0", set(2, 0xFF), 8, false},
		{"TLS", set(1, 0x03), 8, false},
		{"epoch 0", set(4, 0), 8, false},
		{"epoch 256", set(3, 1), 8, true},
		{"coap", []byte("\x40\x01\x12\x34\xb2rd\x11\x28\x39ep=dev123456789012345"), 8, false},
	} {
		id, ok := DTLSCID(tc.b, tc.cidLen)
		if ok != tc.ok || (ok && id != 0xBEEF) || (!ok && id != 0) {
			t.Errorf("%s: DTLSCID = %#x, %v; want ok %v", tc.name, id, ok, tc.ok)
		}
	}
}

func TestIsDTLS(t *testing.T) {
	hello := []byte{
		22, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0, 50, // record, DTLS 1.0 version in hellos
		1, 0, 0, 38, 0, 0, 0, 0, 0, 0, 0, 38, // client_hello, offset 0
	}
	for _, tc := range []struct {
		name         string
		b            []byte
		dtls, hello_ bool
	}{
		{"hello", hello, true, true},
		{"hello fragment", func() []byte { b := bytes.Clone(hello); b[21] = 1; return b }(), true, false},
		{"server hello", func() []byte { b := bytes.Clone(hello); b[13] = 2; return b }(), true, false},
		{"hello epoch 1", func() []byte { b := bytes.Clone(hello); b[4] = 1; return b }(), true, false},
		{"hello short", hello[:24], true, false},
		{"cid record", cidRecord(t, 1, make([]byte, 8), 0), true, false},
		{"alert", []byte{21, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 1, 0, 2, 2, 40}, true, false},
		{"content 19", []byte{19, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0}, false, false},
		{"content 26", []byte{26, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0}, false, false},
		{"TLS", []byte{22, 0x03, 0x03, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0}, false, false},
		{"short", []byte{23, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 1, 0}, false, false},
		{"coap", AppendCoAPPing(nil, 1), false, false},
		{"nil", nil, false, false},
	} {
		if got := IsDTLS(tc.b); got != tc.dtls {
			t.Errorf("%s: IsDTLS = %v", tc.name, got)
		}
		if got := IsDTLSClientHello(tc.b); got != tc.hello_ {
			t.Errorf("%s: IsDTLSClientHello = %v", tc.name, got)
		}
	}
}

func TestCoAP(t *testing.T) {
	ping := AppendCoAPPing([]byte("x"), 0xABCD)
	if !bytes.Equal(ping, []byte{'x', 0x40, 0x00, 0xAB, 0xCD}) {
		t.Errorf("AppendCoAPPing = %x", ping)
	}
	rst := AppendCoAPReset(nil, 0xABCD)
	if !bytes.Equal(rst, []byte{0x70, 0x00, 0xAB, 0xCD}) {
		t.Errorf("AppendCoAPReset = %x", rst)
	}
	if mid, ok := IsCoAPPing(ping[1:]); !ok || mid != 0xABCD {
		t.Errorf("IsCoAPPing(ping) = %#x, %v", mid, ok)
	}
	if !IsCoAPReset(rst, 0xABCD) || IsCoAPReset(rst, 0xABCE) {
		t.Error("IsCoAPReset and message ids")
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"short", rst[:3]},
		{"trailing byte", append(bytes.Clone(rst), 0)},
		{"token", []byte{0x71, 0x00, 0xAB, 0xCD, 0x01}},
		{"ack", []byte{0x60, 0x00, 0xAB, 0xCD}},
		{"non", []byte{0x50, 0x00, 0xAB, 0xCD}},
		{"version 2", []byte{0xB0, 0x00, 0xAB, 0xCD}},
		{"code 0.01", []byte{0x70, 0x01, 0xAB, 0xCD}},
	} {
		if IsCoAPReset(tc.b, 0xABCD) {
			t.Errorf("%s: IsCoAPReset", tc.name)
		}
		ping := bytes.Clone(tc.b)
		if len(ping) > 0 {
			ping[0] &^= 0x30 // make CON
		}
		if tc.name != "ack" && tc.name != "non" {
			if _, ok := IsCoAPPing(ping); ok {
				t.Errorf("%s (as CON): IsCoAPPing", tc.name)
			}
		}
	}
	for _, tc := range []struct {
		b  []byte
		ok bool
	}{
		{ping[1:], true},
		{rst, true},
		{[]byte{0x48, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}, true},
		{[]byte{0x48, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7}, false},
		{[]byte{0x49, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, false},
		{[]byte{0x40, 1, 0}, false},
		{[]byte{0x80, 1, 0, 0}, false},
		{cidRecord(t, 1, make([]byte, 8), 0), false},
	} {
		if IsCoAP(tc.b) != tc.ok {
			t.Errorf("IsCoAP(%x) = %v", tc.b, !tc.ok)
		}
	}
}

// TestCoAPGoCoap cross-checks the ping and reset with go-coap's codec.
func TestCoAPGoCoap(t *testing.T) {
	for _, mid := range []uint16{0, 1, 0x1234, 0xFFFF} {
		buf := make([]byte, 64)
		n, err := coder.DefaultCoder.Encode(message.Message{Code: codes.Empty, Type: message.Confirmable, MessageID: int32(mid)}, buf)
		if err != nil {
			t.Fatal(err)
		}
		if ping := AppendCoAPPing(nil, mid); !bytes.Equal(ping, buf[:n]) {
			t.Errorf("ping %x, go-coap %x", ping, buf[:n])
		}
		if got, ok := IsCoAPPing(buf[:n]); !ok || got != mid {
			t.Errorf("IsCoAPPing(go-coap ping %d) = %d, %v", mid, got, ok)
		}
		var m message.Message
		if _, err := coder.DefaultCoder.Decode(AppendCoAPReset(nil, mid), &m); err != nil {
			t.Fatal(err)
		}
		if m.Type != message.Reset || m.Code != codes.Empty || m.MessageID != int32(mid) || len(m.Token) != 0 {
			t.Errorf("go-coap decoded reset as %v", &m)
		}
		n, err = coder.DefaultCoder.Encode(message.Message{Code: codes.Empty, Type: message.Reset, MessageID: int32(mid)}, buf)
		if err != nil {
			t.Fatal(err)
		}
		if !IsCoAPReset(buf[:n], mid) {
			t.Errorf("go-coap reset %x not recognised", buf[:n])
		}
	}
}

// recorder is a PacketConn that keeps a copy of every datagram written.
type recorder struct {
	net.PacketConn
	mu   sync.Mutex
	sent [][]byte
}

func (r *recorder) WriteTo(b []byte, addr net.Addr) (int, error) {
	r.mu.Lock()
	r.sent = append(r.sent, bytes.Clone(b))
	r.mu.Unlock()
	return r.PacketConn.WriteTo(b, addr)
}

// TestPionCID runs a real DTLS 1.2 handshake with Connection IDs between pion
// peers over loopback and checks what the balancer would see from the client:
// a ClientHello first, and after the handshake records carrying the server's
// CID, from which DTLSCID extracts the node id.
func TestPionCID(t *testing.T) {
	const nodeID, cidLen = 0x0A0B, 8
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	psk := dtls.WithPSK(func([]byte) ([]byte, error) { return []byte("secret-key-123456"), nil })
	suites := dtls.WithCipherSuites(dtls.TLS_PSK_WITH_AES_128_CCM_8)
	ln, err := dtls.ListenWithOptions("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, psk, suites,
		dtls.WithPSKIdentityHint([]byte("server")),
		dtls.WithConnectionIDGenerator(func() []byte {
			cid := make([]byte, cidLen)
			rand.Read(cid[2:])
			cid[0], cid[1] = nodeID>>8, nodeID&0xFF
			return cid
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		buf := make([]byte, 100)
		n, _ := c.Read(buf)
		got <- buf[:n]
	}()

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{PacketConn: pc}
	client, err := dtls.ClientWithOptions(rec, ln.Addr(), psk, suites,
		dtls.WithPSKIdentityHint([]byte("device")),
		dtls.WithConnectionIDGenerator(dtls.OnlySendCIDGenerator()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := client.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	handshake := len(rec.sent)
	rec.mu.Unlock()
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if string(b) != "hello" {
			t.Fatalf("server read %q", b)
		}
	case <-ctx.Done():
		t.Fatal("timeout")
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.sent) == 0 || !IsDTLSClientHello(rec.sent[0]) {
		t.Fatalf("first datagram is not a ClientHello")
	}
	for i, b := range rec.sent {
		if !IsDTLS(b) || IsCoAP(b) {
			t.Errorf("datagram %d: IsDTLS %v, IsCoAP %v", i, IsDTLS(b), IsCoAP(b))
		}
		id, ok := DTLSCID(b, cidLen)
		switch {
		case i >= handshake && (!ok || id != nodeID):
			t.Errorf("application datagram %d: DTLSCID = %#x, %v; want %#x", i, id, ok, nodeID)
		case ok && id != nodeID:
			t.Errorf("handshake datagram %d: DTLSCID = %#x", i, id)
		case i == 0 && ok:
			t.Error("ClientHello has a CID")
		}
	}
	t.Logf("%d handshake datagrams, %d after", handshake, len(rec.sent)-handshake)
	if handshake == len(rec.sent) {
		t.Error("no application datagram recorded")
	}
}

func TestZeroAllocs(t *testing.T) {
	rec := cidRecord(t, 1, []byte{1, 2, 3, 4, 5, 6, 7, 8}, 30)
	buf := make([]byte, 0, 16)
	var sink int
	if n := testing.AllocsPerRun(1000, func() {
		id, _ := DTLSCID(rec, 8)
		buf = AppendCoAPPing(buf[:0], uint16(id))
		mid, _ := IsCoAPPing(buf)
		if IsDTLS(rec) && !IsDTLSClientHello(rec) && !IsCoAPReset(buf, mid) && !IsCoAP(rec) {
			sink++
		}
	}); n != 0 {
		t.Errorf("allocates %v times", n)
	}
	_ = sink
}

func BenchmarkDTLSCID(b *testing.B) {
	rec := cidRecord(b, 1, []byte{1, 2, 3, 4, 5, 6, 7, 8}, 30)
	b.ReportAllocs()
	var sink uint16
	for b.Loop() {
		id, _ := DTLSCID(rec, 8)
		sink += id
	}
	_ = sink
}

func BenchmarkCoAPPing(b *testing.B) {
	buf := make([]byte, 0, 16)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendCoAPPing(buf[:0], 7)
		if !IsCoAPReset(AppendCoAPReset(buf[:0], 7), 7) {
			b.Fatal("not a reset")
		}
	}
}
