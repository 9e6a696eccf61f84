// Package proxyv2 encodes and decodes PROXY protocol version 2 headers
// (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt) for UDP
// datagrams, without allocating.
//
// The balancer prefixes every datagram it forwards to a backend with a PROXY
// header whose source is the client and whose destination is the service
// address the client sent to; the backend prefixes its replies with a header
// whose source is the service address and whose destination is the client.
// Health checks use the LOCAL command, which carries no addresses.
//
// [Parse] accepts the PROXY command with the address families UDP over IPv4
// and UDP over IPv6, and the LOCAL command with any address family defined by
// the specification (its address block is skipped, as the specification
// requires). TLVs are skipped after checking that they exactly fill the
// header. Every rejection is one of the package's sentinel errors, returned
// unwrapped so that callers can count drop reasons with a switch and without
// allocating.
package proxyv2

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strconv"
)

// Command is the PROXY protocol v2 command.
type Command uint8

// Commands.
const (
	// Local marks a datagram the proxy sent on its own behalf, for example a
	// health check; the receiver uses the real datagram endpoints.
	Local Command = 0x0
	// Proxy marks a relayed datagram; the header carries the original
	// endpoints.
	Proxy Command = 0x1
)

func (c Command) String() string {
	switch c {
	case Local:
		return "LOCAL"
	case Proxy:
		return "PROXY"
	}
	return "Command(" + strconv.Itoa(int(c)) + ")"
}

// Header sizes.
const (
	// SignatureLen is the length of the v2 signature.
	SignatureLen = 12
	// FixedLen is the length of the fixed part of every v2 header.
	FixedLen = 16
	// LocalLen is the length of the header AppendHeader writes for LOCAL.
	LocalLen = FixedLen
	// IPv4Len is the length of the header AppendHeader writes for IPv4.
	IPv4Len = FixedLen + 12
	// IPv6Len is the length of the header AppendHeader writes for IPv6,
	// the longest it writes.
	IPv6Len = FixedLen + 36
)

// signature is the v2 signature, "\r\n\r\n\0\r\nQUIT\n".
const signature = "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"

// Address family and transport protocol bytes (the 14th header byte).
const (
	famUnspec = 0x00
	famTCP4   = 0x11
	famUDP4   = 0x12
	famTCP6   = 0x21
	famUDP6   = 0x22
	famStream = 0x31 // AF_UNIX, SOCK_STREAM
	famDgram  = 0x32 // AF_UNIX, SOCK_DGRAM
)

// Errors returned by Parse.
var (
	// ErrNoSignature means the datagram does not start with the v2
	// signature.
	ErrNoSignature = errors.New("proxyv2: no PROXY v2 signature")
	// ErrTruncated means the datagram ends before the end of the header
	// (possibly within the signature).
	ErrTruncated = errors.New("proxyv2: truncated header")
	// ErrVersion means the version nibble is not 2.
	ErrVersion = errors.New("proxyv2: unsupported version")
	// ErrCommand means the command is neither LOCAL nor PROXY.
	ErrCommand = errors.New("proxyv2: unsupported command")
	// ErrFamily means the address family and transport are not UDP over
	// IPv4 or IPv6 (for PROXY) or not defined by the specification (for
	// LOCAL).
	ErrFamily = errors.New("proxyv2: unsupported address family or transport")
	// ErrLength means the header length is too short for its address
	// family.
	ErrLength = errors.New("proxyv2: header length too short for the address family")
	// ErrTLV means the TLVs do not exactly fill the rest of the header.
	ErrTLV = errors.New("proxyv2: malformed TLV")
)

// Header is a decoded PROXY v2 header.
type Header struct {
	Command Command
	// Src and Dst are the original source and destination of the datagram.
	// They are the zero AddrPort for LOCAL.
	Src, Dst netip.AddrPort
}

// AppendHeader appends a PROXY v2 header to b and returns the extended slice;
// it does not allocate when b has room for [IPv6Len] more bytes.
//
// For [Proxy], the address family is UDP over IPv4 when src and dst are both
// IPv4 addresses and UDP over IPv6 otherwise, IPv4 addresses then being
// written in their IPv4-mapped form; an invalid (zero) address is written as
// all zeros. For [Local] (and any other command), src and dst are ignored and
// a LOCAL header with family UNSPEC and no address block is written, as the
// specification asks of senders.
func AppendHeader(b []byte, cmd Command, src, dst netip.AddrPort) []byte {
	b = append(b, signature...)
	if cmd != Proxy {
		return append(b, 0x20|byte(Local), famUnspec, 0, 0)
	}
	if src.Addr().Is4() && dst.Addr().Is4() {
		s, d := src.Addr().As4(), dst.Addr().As4()
		b = append(b, 0x20|byte(Proxy), famUDP4, 0, 12)
		b = append(b, s[:]...)
		b = append(b, d[:]...)
	} else {
		s, d := src.Addr().As16(), dst.Addr().As16()
		b = append(b, 0x20|byte(Proxy), famUDP6, 0, 36)
		b = append(b, s[:]...)
		b = append(b, d[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// Parse decodes the PROXY v2 header at the start of a datagram and returns it
// together with the payload that follows it, which aliases b. It never
// panics; on error the header and payload are zero.
func Parse(b []byte) (h Header, payload []byte, err error) {
	if len(b) < FixedLen {
		n := min(len(b), SignatureLen)
		if string(b[:n]) != signature[:n] {
			return Header{}, nil, ErrNoSignature
		}
		return Header{}, nil, ErrTruncated
	}
	if string(b[:SignatureLen]) != signature {
		return Header{}, nil, ErrNoSignature
	}
	if b[12]>>4 != 2 {
		return Header{}, nil, ErrVersion
	}
	cmd := Command(b[12] & 0xF)
	if cmd != Local && cmd != Proxy {
		return Header{}, nil, ErrCommand
	}
	fam := b[13]
	n := int(binary.BigEndian.Uint16(b[14:16]))
	if len(b)-FixedLen < n {
		// Check the family first so that the error names the first
		// problem in the header.
		if !validFamily(cmd, fam) {
			return Header{}, nil, ErrFamily
		}
		return Header{}, nil, ErrTruncated
	}
	block, payload := b[FixedLen:FixedLen+n], b[FixedLen+n:]

	if cmd == Local {
		// The receiver "must discard the protocol block including the
		// family, which is ignored".
		if !validFamily(cmd, fam) {
			return Header{}, nil, ErrFamily
		}
		return Header{Command: Local}, payload, nil
	}

	var tlvs []byte
	switch fam {
	case famUDP4:
		if n < 12 {
			return Header{}, nil, ErrLength
		}
		h.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(block[0:4])), binary.BigEndian.Uint16(block[8:10]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(block[4:8])), binary.BigEndian.Uint16(block[10:12]))
		tlvs = block[12:]
	case famUDP6:
		if n < 36 {
			return Header{}, nil, ErrLength
		}
		h.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(block[0:16])), binary.BigEndian.Uint16(block[32:34]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(block[16:32])), binary.BigEndian.Uint16(block[34:36]))
		tlvs = block[36:]
	default:
		return Header{}, nil, ErrFamily
	}
	for len(tlvs) > 0 {
		if len(tlvs) < 3 {
			return Header{}, nil, ErrTLV
		}
		l := 3 + int(binary.BigEndian.Uint16(tlvs[1:3]))
		if len(tlvs) < l {
			return Header{}, nil, ErrTLV
		}
		tlvs = tlvs[l:]
	}
	h.Command = Proxy
	return h, payload, nil
}

// validFamily reports whether fam is acceptable with cmd: UDP over IP for
// PROXY, any family the specification defines for LOCAL.
func validFamily(cmd Command, fam byte) bool {
	switch fam {
	case famUDP4, famUDP6:
		return true
	case famUnspec, famTCP4, famTCP6, famStream, famDgram:
		return cmd == Local
	}
	return false
}
