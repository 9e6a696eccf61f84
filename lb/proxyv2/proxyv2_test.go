package proxyv2

import (
	"bytes"
	"encoding/hex"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

var (
	client4 = netip.MustParseAddrPort("192.0.2.10:40000")
	vip4    = netip.MustParseAddrPort("198.51.100.1:5683")
	client6 = netip.MustParseAddrPort("[2001:db8::10]:40000")
	vip6    = netip.MustParseAddrPort("[2001:db8:1::1]:5684")
)

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestAppendHeaderGolden(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cmd      Command
		src, dst netip.AddrPort
		want     string
	}{
		{"v4", Proxy, client4, vip4,
			"0d0a0d0a000d0a515549540a 21 12 000c c000020a c6336401 9c40 1633"},
		{"v6", Proxy, client6, vip6,
			"0d0a0d0a000d0a515549540a 21 22 0024 20010db8000000000000000000000010 20010db8000100000000000000000001 9c40 1634"},
		{"mixed", Proxy, client4, vip6,
			"0d0a0d0a000d0a515549540a 21 22 0024 00000000000000000000ffffc000020a 20010db8000100000000000000000001 9c40 1634"},
		{"local", Local, client4, vip4, "0d0a0d0a000d0a515549540a 20 00 0000"},
		{"bad command", Command(7), client4, vip4, "0d0a0d0a000d0a515549540a 20 00 0000"},
	} {
		got := AppendHeader([]byte("x"), tc.cmd, tc.src, tc.dst)
		if want := append([]byte("x"), unhex(tc.want)...); !bytes.Equal(got, want) {
			t.Errorf("%s: got\n%x, want\n%x", tc.name, got, want)
		}
	}
	if n := len(AppendHeader(nil, Proxy, client4, vip4)); n != IPv4Len {
		t.Errorf("IPv4 header is %d bytes", n)
	}
	if n := len(AppendHeader(nil, Proxy, client6, vip6)); n != IPv6Len {
		t.Errorf("IPv6 header is %d bytes", n)
	}
	if n := len(AppendHeader(nil, Local, client6, vip6)); n != LocalLen {
		t.Errorf("LOCAL header is %d bytes", n)
	}
}

func TestRoundTrip(t *testing.T) {
	payload := []byte("\x40\x01\x12\x34coap")
	for _, tc := range []struct {
		cmd      Command
		src, dst netip.AddrPort
	}{
		{Proxy, client4, vip4},
		{Proxy, client6, vip6},
		{Proxy, vip6, client6},
		{Proxy, netip.MustParseAddrPort("[::ffff:192.0.2.1]:1"), netip.MustParseAddrPort("[::ffff:192.0.2.2]:2")},
		{Proxy, netip.MustParseAddrPort("0.0.0.0:0"), netip.MustParseAddrPort("255.255.255.255:65535")},
		{Local, netip.AddrPort{}, netip.AddrPort{}},
	} {
		for _, p := range [][]byte{payload, {}} {
			b := append(AppendHeader(nil, tc.cmd, tc.src, tc.dst), p...)
			h, got, err := Parse(b)
			if err != nil {
				t.Errorf("%v %v->%v: %v", tc.cmd, tc.src, tc.dst, err)
				continue
			}
			if want := (Header{tc.cmd, tc.src, tc.dst}); h != want {
				t.Errorf("Parse = %+v, want %+v", h, want)
			}
			if !bytes.Equal(got, p) {
				t.Errorf("payload = %q, want %q", got, p)
			}
		}
	}
	// A mixed pair comes back with the IPv4 address mapped.
	h, _, _ := Parse(AppendHeader(nil, Proxy, client4, vip6))
	if h.Src.Addr() != netip.AddrFrom16(client4.Addr().As16()) || h.Src.Port() != client4.Port() || h.Dst != vip6 {
		t.Errorf("mixed: %+v", h)
	}
}

// withLen returns hdr (a v2 header without TLVs) extended by extra bytes,
// with the length field adjusted.
func withLen(hdr []byte, extra []byte, delta int) []byte {
	b := append(append([]byte(nil), hdr...), extra...)
	n := int(b[14])<<8 | int(b[15]) + len(extra) + delta
	b[14], b[15] = byte(n>>8), byte(n)
	return b
}

func TestTLVs(t *testing.T) {
	hdr := AppendHeader(nil, Proxy, client6, vip6)
	tlvs := unhex("04 0003 000000  05 0004 61626364  e0 0000")
	b := append(withLen(hdr, tlvs, 0), "payload"...)
	h, p, err := Parse(b)
	if err != nil || h.Src != client6 || h.Dst != vip6 || string(p) != "payload" {
		t.Fatalf("Parse = %+v, %q, %v", h, p, err)
	}
	for _, bad := range []string{"04", "04 00", "04 0001", "04 0002 00", "04 0000 05 0001"} {
		b := append(withLen(hdr, unhex(bad), 0), "payload"...)
		if _, _, err := Parse(b); err != ErrTLV {
			t.Errorf("TLVs %q: error %v, want ErrTLV", bad, err)
		}
	}
	// LOCAL skips its whole block, TLVs included, unchecked.
	local := withLen(AppendHeader(nil, Local, client4, vip4), unhex("04 ffff"), 0)
	if h, p, err := Parse(append(local, 'x')); err != nil || h != (Header{Command: Local}) || string(p) != "x" {
		t.Errorf("LOCAL with block: %+v, %q, %v", h, p, err)
	}
}

func TestParseErrors(t *testing.T) {
	v4 := AppendHeader(nil, Proxy, client4, vip4)
	v6 := AppendHeader(nil, Proxy, client6, vip6)
	set := func(b []byte, i int, v byte) []byte {
		b = append([]byte(nil), b...)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		err  error
	}{
		{"empty", nil, ErrTruncated},
		{"prefix", v4[:5], ErrTruncated},
		{"signature only", v4[:12], ErrTruncated},
		{"fixed part short", v4[:15], ErrTruncated},
		{"bad prefix", []byte("\r\n\r\nX"), ErrNoSignature},
		{"coap", []byte("\x40\x01\x12\x34\xb2rd"), ErrNoSignature},
		{"v1", []byte("PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n"), ErrNoSignature},
		{"bad signature", set(v4, 11, 0), ErrNoSignature},
		{"version 1", set(v4, 12, 0x11), ErrVersion},
		{"version 3", set(v4, 12, 0x31), ErrVersion},
		{"command 2", set(v4, 12, 0x22), ErrCommand},
		{"proxy tcp4", set(v4, 13, 0x11), ErrFamily},
		{"proxy tcp6", set(v6, 13, 0x21), ErrFamily},
		{"proxy unspec", set(v4, 13, 0x00), ErrFamily},
		{"proxy unix", set(v4, 13, 0x32), ErrFamily},
		{"proxy 0x13", set(v4, 13, 0x13), ErrFamily},
		{"local 0x13", set(set(v4, 12, 0x20), 13, 0x13), ErrFamily},
		{"local 0x40", set(AppendHeader(nil, Local, client4, vip4), 13, 0x40), ErrFamily},
		{"truncated v4", v4[:IPv4Len-1], ErrTruncated},
		{"truncated v6", v6[:IPv6Len-1], ErrTruncated},
		{"truncated local", withLen(AppendHeader(nil, Local, client4, vip4), nil, 1), ErrTruncated},
		{"family first", set(v4[:IPv4Len-1], 13, 0x11), ErrFamily},
		{"v4 length 11", withLen(v4[:IPv4Len-1], nil, -1), ErrLength},
		{"v4 block as v6", set(v4, 13, 0x22), ErrLength},
		{"v6 length 35", withLen(v6[:IPv6Len-1], nil, -1), ErrLength},
		{"huge length", set(set(v4, 14, 0xff), 15, 0xff), ErrTruncated},
	} {
		h, p, err := Parse(tc.b)
		if err != tc.err {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.err)
		}
		if err != nil && (h != Header{} || p != nil) {
			t.Errorf("%s: non-zero results with error", tc.name)
		}
	}
	// The v6 header with family v4 parses as v4 with TLV bytes following,
	// which happen not to be well-formed TLVs here.
	if _, _, err := Parse(set(v6, 13, 0x12)); err == nil {
		t.Error("v6 block read as v4 accepted")
	}
	// LOCAL with each family defined by the specification is accepted.
	for _, fam := range []byte{0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32} {
		b := append(set(set(v4, 12, 0x20), 13, fam), "ping"...)
		if h, p, err := Parse(b); err != nil || h != (Header{Command: Local}) || string(p) != "ping" {
			t.Errorf("LOCAL family %#x: %+v, %q, %v", fam, h, p, err)
		}
	}
	for _, err := range []error{ErrNoSignature, ErrTruncated, ErrVersion, ErrCommand, ErrFamily, ErrLength, ErrTLV} {
		if !strings.HasPrefix(err.Error(), "proxyv2: ") {
			t.Errorf("error %q lacks the package prefix", err)
		}
	}
}

func TestCommandString(t *testing.T) {
	if Local.String() != "LOCAL" || Proxy.String() != "PROXY" || Command(12).String() != "Command(12)" {
		t.Error(Local, Proxy, Command(12))
	}
}

func udpAddr(ap netip.AddrPort) *net.UDPAddr { return net.UDPAddrFromAddrPort(ap) }

func randAddrPort(r *rand.Rand, v6 bool) netip.AddrPort {
	var a netip.Addr
	if v6 {
		var b [16]byte
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if b[0] == 0 { // avoid IPv4-mapped addresses, which go-proxyproto shortens
			b[0] = 0x20
		}
		a = netip.AddrFrom16(b)
	} else {
		a = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
	}
	return netip.AddrPortFrom(a, uint16(r.Uint32()))
}

func fromNetAddr(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	u, ok := a.(*net.UDPAddr)
	if !ok {
		t.Fatalf("address %T %v is not UDP", a, a)
	}
	ap := u.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// TestGoProxyproto cross-checks the codec against
// github.com/pires/go-proxyproto in both directions.
func TestGoProxyproto(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	payload := []byte("\x40\x01\x12\x34")
	for i := range 200 {
		v6 := i%2 == 1
		src, dst := randAddrPort(r, v6), randAddrPort(r, v6)
		tp := proxyproto.UDPv4
		if v6 {
			tp = proxyproto.UDPv6
		}
		ref := &proxyproto.Header{
			Version: 2, Command: proxyproto.PROXY, TransportProtocol: tp,
			SourceAddr: udpAddr(src), DestinationAddr: udpAddr(dst),
		}
		want, err := ref.Format()
		if err != nil {
			t.Fatal(err)
		}
		// Ours encodes exactly like theirs.
		mine := AppendHeader(nil, Proxy, src, dst)
		if !bytes.Equal(mine, want) {
			t.Fatalf("%v->%v: AppendHeader\n%x, go-proxyproto\n%x", src, dst, mine, want)
		}
		// Theirs decodes ours.
		h, p, err := proxyproto.ParseUDPDatagram(append(mine, payload...))
		if err != nil {
			t.Fatal(err)
		}
		if h.Command != proxyproto.PROXY || h.TransportProtocol != tp ||
			fromNetAddr(t, h.SourceAddr) != src || fromNetAddr(t, h.DestinationAddr) != dst || !bytes.Equal(p, payload) {
			t.Fatalf("go-proxyproto decoded %+v, %x", h, p)
		}
		// Ours decodes theirs, with TLVs.
		if err := ref.SetTLVs([]proxyproto.TLV{
			{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("lwm2m.example")},
			{Type: proxyproto.PP2_TYPE_NOOP, Value: make([]byte, r.IntN(8))},
		}); err != nil {
			t.Fatal(err)
		}
		dgram, err := ref.FormatUDPDatagram(payload)
		if err != nil {
			t.Fatal(err)
		}
		got, gp, err := Parse(dgram)
		if err != nil || got != (Header{Proxy, src, dst}) || !bytes.Equal(gp, payload) {
			t.Fatalf("Parse(go-proxyproto) = %+v, %x, %v; want %v->%v", got, gp, err, src, dst)
		}
	}
	// LOCAL both ways.
	local, err := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}).Format()
	if err != nil {
		t.Fatal(err)
	}
	if mine := AppendHeader(nil, Local, client4, vip4); !bytes.Equal(mine, local) {
		t.Errorf("LOCAL: AppendHeader %x, go-proxyproto %x", mine, local)
	}
	if h, _, err := proxyproto.ParseUDPDatagram(append(AppendHeader(nil, Local, client4, vip4), payload...)); err != nil || h.Command != proxyproto.LOCAL {
		t.Errorf("go-proxyproto LOCAL: %+v, %v", h, err)
	}
}

func TestZeroAllocs(t *testing.T) {
	buf := make([]byte, 0, 1500)
	dgram := append(AppendHeader(nil, Proxy, client6, vip6), "payload"...)
	var sink int
	if n := testing.AllocsPerRun(1000, func() {
		buf = AppendHeader(buf[:0], Proxy, client6, vip6)
		h, p, err := Parse(dgram)
		if err != nil {
			sink++
		}
		sink += len(p) + int(h.Src.Port())
		if _, _, err := Parse(dgram[:20]); err == nil {
			sink++
		}
	}); n != 0 {
		t.Errorf("AppendHeader+Parse allocate %v times", n)
	}
	_ = sink
}

func BenchmarkAppendHeader(b *testing.B) {
	buf := make([]byte, 0, 1500)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendHeader(buf[:0], Proxy, client6, vip6)
	}
}

func BenchmarkParse(b *testing.B) {
	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
	}{{"v4", client4, vip4}, {"v6", client6, vip6}} {
		b.Run(tc.name, func(b *testing.B) {
			dgram := append(AppendHeader(nil, Proxy, tc.src, tc.dst), make([]byte, 100)...)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := Parse(dgram); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGoProxyproto measures github.com/pires/go-proxyproto on the same
// datagram, for comparison.
func BenchmarkGoProxyproto(b *testing.B) {
	dgram := append(AppendHeader(nil, Proxy, client6, vip6), make([]byte, 100)...)
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := proxyproto.ParseUDPDatagram(dgram); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("format", func(b *testing.B) {
		h := proxyproto.HeaderProxyFromAddrs(2, udpAddr(client6), udpAddr(vip6))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := h.Format(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
