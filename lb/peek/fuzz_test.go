package peek

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func FuzzDTLSCID(f *testing.F) {
	f.Add(cidRecord(f, 1, []byte{1, 2, 3, 4, 5, 6, 7, 8}, 4), 8)
	f.Add(cidRecord(f, 1, []byte{1, 2}, 0), 2)
	f.Add([]byte{22, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 8)
	f.Add([]byte{}, -1)
	f.Fuzz(func(t *testing.T, b []byte, cidLen int) {
		id, ok := DTLSCID(b, cidLen)
		hello := IsDTLSClientHello(b)
		dtls := IsDTLS(b)
		if !ok {
			if id != 0 {
				t.Fatal("node id without ok")
			}
		} else {
			// Independent restatement of the layout.
			end := 11 + cidLen + 2
			if !dtls || cidLen < 2 || cidLen > MaxCIDLen || len(b) < end || b[0] != 25 || b[1] != 0xFE || b[2] != 0xFD ||
				b[3]|b[4] == 0 || end+int(binary.BigEndian.Uint16(b[11+cidLen:])) > len(b) || id != uint16(b[11])<<8|uint16(b[12]) {
				t.Fatalf("DTLSCID(%x, %d) = %#x, true", b, cidLen, id)
			}
		}
		if hello && (!dtls || b[0] != 22 || ok) {
			t.Fatalf("ClientHello %x: IsDTLS %v, CID %v", b, dtls, ok)
		}
		if dtls && IsCoAP(b) {
			t.Fatalf("%x is both DTLS and CoAP", b)
		}
	})
}

func FuzzCoAP(f *testing.F) {
	f.Add(AppendCoAPPing(nil, 1), uint16(1))
	f.Add(AppendCoAPReset(nil, 0xFFFF), uint16(0xFFFF))
	f.Add([]byte{0x48, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}, uint16(0))
	f.Fuzz(func(t *testing.T, b []byte, mid uint16) {
		if m, ok := IsCoAPPing(b); ok {
			if !bytes.Equal(b, AppendCoAPPing(nil, m)) || !IsCoAP(b) {
				t.Fatalf("IsCoAPPing(%x) = %d", b, m)
			}
		} else if m != 0 {
			t.Fatal("message id without ok")
		}
		if IsCoAPReset(b, mid) != bytes.Equal(b, AppendCoAPReset(nil, mid)) {
			t.Fatalf("IsCoAPReset(%x, %d) wrong", b, mid)
		}
		if IsCoAP(b) && (len(b) < 4 || b[0]&0xC0 != 0x40 || int(b[0]&0xF) > min(8, len(b)-4)) {
			t.Fatalf("IsCoAP(%x)", b)
		}
	})
}

// FuzzDTLSHelloAnswer: the answer parser never panics, and whatever it
// accepts is an epoch-0 DTLS record that fits in the datagram, of the kind
// it reports, with the sequence number of its header.
func FuzzDTLSHelloAnswer(f *testing.F) {
	var random [32]byte
	f.Add(AppendDTLSClientHello(nil, &random, 1))
	f.Add([]byte{22, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, 7, 0, 15, 3, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 0xFE, 0xFF, 0})
	f.Add([]byte{21, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 2, 40})
	f.Add(append([]byte{22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 2, 0, 50, 2, 0, 0, 38, 0, 0, 0, 0, 0, 0, 0, 38, 0xFE, 0xFD}, make([]byte, 36)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, seq := ParseDTLSHelloAnswer(b)
		if a == NotDTLSHelloAnswer {
			if seq != 0 {
				t.Fatal("sequence number without an answer")
			}
			return
		}
		if !IsDTLS(b) || IsCoAP(b) || IsDTLSClientHello(b) || b[3]|b[4] != 0 || (b[2] != 0xFD && b[2] != 0xFF) {
			t.Fatalf("%v in %x", a, b)
		}
		n := int(binary.BigEndian.Uint16(b[11:13]))
		if 13+n > len(b) || seq != binary.BigEndian.Uint64(append([]byte{0, 0}, b[5:11]...)) || seq > MaxDTLSSeq {
			t.Fatalf("%v in %x: record length %d, seq %#x", a, b, n, seq)
		}
		switch a {
		case DTLSAlert:
			if b[0] != ContentAlert || n != 2 {
				t.Fatalf("alert %x", b)
			}
		case DTLSHelloVerifyRequest, DTLSServerHello:
			msgType := byte(3) // hello_verify_request
			if a == DTLSServerHello {
				msgType = 2
			}
			if b[0] != ContentHandshake || n < 12 || b[13] != msgType || b[19]|b[20]|b[21] != 0 || b[25] != 0xFE {
				t.Fatalf("%v %x", a, b)
			}
		default:
			t.Fatalf("unknown answer %d", a)
		}
	})
}
