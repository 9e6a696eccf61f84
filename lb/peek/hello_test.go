package peek

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/protocol"
	"github.com/pion/dtls/v3/pkg/protocol/alert"
	"github.com/pion/dtls/v3/pkg/protocol/extension"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
)

var testRandom = [32]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32}

// TestDTLSClientHelloPion decodes the ClientHello with pion's record layer.
func TestDTLSClientHelloPion(t *testing.T) {
	const seq = 0x0000_1234_5678_9ABC
	b := AppendDTLSClientHello([]byte("x"), &testRandom, seq|0xFFFF<<48)[1:]
	if len(b) != DTLSClientHelloLen {
		t.Fatalf("length %d, DTLSClientHelloLen %d", len(b), DTLSClientHelloLen)
	}
	if !IsDTLS(b) || !IsDTLSClientHello(b) || IsCoAP(b) {
		t.Fatal("not recognised as a DTLS ClientHello")
	}
	var rl recordlayer.RecordLayer
	if err := rl.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	if rl.Header.SequenceNumber != seq || rl.Header.Epoch != 0 || rl.Header.Version != protocol.Version1_2 ||
		int(b[11])<<8|int(b[12]) != len(b)-13 {
		t.Fatalf("record header %+v", rl.Header)
	}
	h, ok := rl.Content.(*handshake.Handshake)
	if !ok {
		t.Fatalf("content %T", rl.Content)
	}
	ch, ok := h.Message.(*handshake.MessageClientHello)
	if !ok {
		t.Fatalf("message %T", h.Message)
	}
	if h.Header.MessageSequence != 0 || h.Header.FragmentOffset != 0 || h.Header.FragmentLength != h.Header.Length ||
		!ch.Version.Equal(protocol.Version1_2) || len(ch.SessionID) != 0 || len(ch.Cookie) != 0 {
		t.Fatalf("handshake %+v, hello %+v", h.Header, ch)
	}
	if r := ch.Random.MarshalFixed(); r != testRandom {
		t.Errorf("random %x", r)
	}
	want := []uint16{0xC0A8, 0x00A8, 0xC0AE, 0xC02B}
	if len(ch.CipherSuiteIDs) != len(want) {
		t.Fatalf("cipher suites %x", ch.CipherSuiteIDs)
	}
	for i := range want {
		if ch.CipherSuiteIDs[i] != want[i] {
			t.Errorf("cipher suites %x, want %x", ch.CipherSuiteIDs, want)
		}
	}
	var ems, groups bool
	for _, e := range ch.Extensions {
		switch e := e.(type) {
		case *extension.UseExtendedMasterSecret:
			ems = true
		case *extension.SupportedEllipticCurves:
			groups = len(e.EllipticCurves) == 2
		}
	}
	if !ems || !groups || len(ch.Extensions) != 4 {
		t.Errorf("extensions %+v", ch.Extensions)
	}
}

// record marshals a plaintext epoch-0 record with pion.
func record(t *testing.T, seq uint64, content protocol.Content) []byte {
	t.Helper()
	rl := recordlayer.RecordLayer{
		Header:  recordlayer.Header{Version: protocol.Version1_2, SequenceNumber: seq},
		Content: content,
	}
	b, err := rl.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseDTLSHelloAnswer(t *testing.T) {
	const seq = 0x0000_ABCD_0000_1234
	hvr := record(t, seq, &handshake.Handshake{Message: &handshake.MessageHelloVerifyRequest{
		Version: protocol.Version1_0, Cookie: make([]byte, 20),
	}})
	hvr[2] = 0xFF // a DTLS 1.0 record, as some servers send
	emptyCookie := record(t, seq, &handshake.Handshake{Message: &handshake.MessageHelloVerifyRequest{Version: protocol.Version1_2}})
	var random handshake.Random
	sh := record(t, seq, &handshake.Handshake{Message: &handshake.MessageServerHello{
		Version: protocol.Version1_2, Random: random, CipherSuiteID: new(uint16), CompressionMethod: &protocol.CompressionMethod{},
	}})
	al := record(t, seq, &alert.Alert{Level: alert.Fatal, Description: alert.HandshakeFailure})
	warn := record(t, seq, &alert.Alert{Level: alert.Warning, Description: alert.CloseNotify})
	set := func(b []byte, i int, v byte) []byte {
		b = append([]byte(nil), b...)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want DTLSHelloAnswer
	}{
		{"hello verify request", hvr, DTLSHelloVerifyRequest},
		{"empty cookie", emptyCookie, DTLSHelloVerifyRequest},
		{"hvr then more", append(append([]byte(nil), hvr...), 1, 2, 3), DTLSHelloVerifyRequest},
		{"server hello", sh, DTLSServerHello},
		{"server hello flight", append(append([]byte(nil), sh...), hvr...), DTLSServerHello},
		{"fatal alert", al, DTLSAlert},
		{"warning alert", warn, DTLSAlert},
		{"alert level 3", set(al, 13, 3), NotDTLSHelloAnswer},
		{"alert 3 bytes", append(set(al, 12, 3), 0), NotDTLSHelloAnswer},
		{"alert truncated", al[:14], NotDTLSHelloAnswer},
		{"hvr truncated", hvr[:len(hvr)-1], NotDTLSHelloAnswer},
		{"hvr cookie too long", set(hvr, 27, 21), NotDTLSHelloAnswer},
		{"hvr fragment", set(hvr, 21, 1), NotDTLSHelloAnswer},
		{"hvr epoch 1", set(hvr, 4, 1), NotDTLSHelloAnswer},
		{"hvr TLS", set(hvr, 1, 3), NotDTLSHelloAnswer},
		{"hvr version FEFE", set(hvr, 2, 0xFE), NotDTLSHelloAnswer},
		{"server hello short", set(set(sh, 12, 12+37), 24, 37), NotDTLSHelloAnswer},
		{"client hello", AppendDTLSClientHello(nil, &testRandom, seq), NotDTLSHelloAnswer},
		{"application data", set(al, 0, ContentApplicationData), NotDTLSHelloAnswer},
		{"cid record", cidRecord(t, 0, make([]byte, 8), 2), NotDTLSHelloAnswer},
		{"coap reset", AppendCoAPReset(nil, 1), NotDTLSHelloAnswer},
		{"nil", nil, NotDTLSHelloAnswer},
	} {
		got, s := ParseDTLSHelloAnswer(tc.b)
		if got != tc.want || (got != NotDTLSHelloAnswer && s != seq) || (got == NotDTLSHelloAnswer && s != 0) {
			t.Errorf("%s: ParseDTLSHelloAnswer = %v, %#x; want %v", tc.name, got, s, tc.want)
		}
	}
	if DTLSHelloVerifyRequest.String() != "hello_verify_request" || DTLSServerHello.String() != "server_hello" ||
		DTLSAlert.String() != "alert" || NotDTLSHelloAnswer.String() != "none" {
		t.Error("String")
	}
}

// TestDTLSHelloPionServers sends the ClientHello to real pion servers and
// checks what they answer: a HelloVerifyRequest with cookies on, a
// ServerHello with cookies off, a fatal alert when no cipher suite matches.
// pion keeps per-peer state and numbers its own records, so the sequence
// number is not checked here.
func TestDTLSHelloPionServers(t *testing.T) {
	psk := func([]byte) ([]byte, error) { return []byte("secret"), nil }
	for _, tc := range []struct {
		name string
		cfg  *dtls.Config
		want DTLSHelloAnswer
	}{
		{"cookies", &dtls.Config{PSK: psk, PSKIdentityHint: []byte("h"), CipherSuites: []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8}}, DTLSHelloVerifyRequest},
		{"no cookies", &dtls.Config{PSK: psk, PSKIdentityHint: []byte("h"), CipherSuites: []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM_8},
			InsecureSkipVerifyHello: true, ExtendedMasterSecret: dtls.RequireExtendedMasterSecret}, DTLSServerHello},
		{"no common suite", &dtls.Config{PSK: psk, PSKIdentityHint: []byte("h"), CipherSuites: []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CBC_SHA256},
			InsecureSkipVerifyHello: true}, DTLSAlert},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := dtls.Listen("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						defer cancel()
						_ = c.(*dtls.Conn).HandshakeContext(ctx)
						c.Close()
					}()
				}
			}()
			pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			to := ln.Addr().(*net.UDPAddr).AddrPort()
			// Twice: the second, identical ClientHello is a retransmission
			// that pion answers again.
			for i := range 2 {
				if _, err := pc.WriteToUDPAddrPort(AppendDTLSClientHello(nil, &testRandom, uint64(100+i)), to); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 2048)
				pc.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, from, err := pc.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatalf("probe %d: %v", i, err)
				}
				got, seq := ParseDTLSHelloAnswer(buf[:n])
				t.Logf("probe %d: %v, seq %d, %d bytes from %v", i, got, seq, n, from)
				if got != tc.want || from != netip.AddrPortFrom(to.Addr(), to.Port()) {
					t.Fatalf("probe %d: answer %v (%x), want %v", i, got, buf[:n], tc.want)
				}
				if tc.want == DTLSAlert {
					break // the handshake is over
				}
			}
		})
	}
}

func TestDTLSHelloZeroAllocs(t *testing.T) {
	var random [32]byte
	buf := make([]byte, 0, DTLSClientHelloLen)
	hvr := []byte{22, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, 7, 0, 15, 3, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 0xFE, 0xFF, 0}
	var sink uint64
	if n := testing.AllocsPerRun(1000, func() {
		buf = AppendDTLSClientHello(buf[:0], &random, sink)
		a, seq := ParseDTLSHelloAnswer(hvr)
		sink += seq + uint64(a)
	}); n != 0 {
		t.Errorf("allocates %v times", n)
	}
	if a, seq := ParseDTLSHelloAnswer(hvr); a != DTLSHelloVerifyRequest || seq != 7 {
		t.Errorf("hand-made HelloVerifyRequest: %v, %d", a, seq)
	}
}
