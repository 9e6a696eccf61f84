// Package peek holds the small parsers the balancer applies to every
// datagram: recognising DTLS records and extracting the node id from a DTLS
// Connection ID (RFC 9146), and building and recognising the probes of the
// health checks: the CoAP ping (RFC 7252, section 4.2 and 4.3) and the DTLS
// ClientHello with the answers a DTLS server gives it (RFC 6347, section
// 4.2.1).
//
// The parsers only read their input, never allocate and never panic,
// whatever the input; the Append functions allocate only when b lacks room.
//
// DTLS and CoAP datagrams are told apart by their first byte: DTLS content
// types are 20 to 25, while a CoAP message starts with version 1 in its two
// top bits (0x40 to 0x7F).
package peek

import "encoding/binary"

// DTLS record content types.
const (
	ContentChangeCipherSpec = 20
	ContentAlert            = 21
	ContentHandshake        = 22
	ContentApplicationData  = 23
	ContentHeartbeat        = 24
	// ContentTLS12CID is tls12_cid, a record carrying a Connection ID
	// (RFC 9146).
	ContentTLS12CID = 25
)

const (
	// dtlsHeaderLen is the length of a DTLS 1.0/1.2 record header without
	// CID: type 1, version 2, epoch 2, sequence number 6, length 2.
	dtlsHeaderLen = 13
	// cidOffset is the offset of the CID in a tls12_cid record.
	cidOffset = 11
)

// MaxCIDLen is the largest Connection ID length (RFC 9146).
const MaxCIDLen = 255

// IsDTLS reports whether b starts like a DTLS record: a content type from 20
// to 25, a major version byte of 0xFE and room for a record header.
func IsDTLS(b []byte) bool {
	return len(b) >= dtlsHeaderLen && b[0] >= ContentChangeCipherSpec && b[0] <= ContentTLS12CID && b[1] == 0xFE
}

// IsDTLSClientHello reports whether b starts with a DTLS handshake record of
// epoch 0 holding (the first fragment of) a ClientHello. Only such datagrams
// may open a new DTLS session.
func IsDTLSClientHello(b []byte) bool {
	// Record header, then handshake header: msg_type 1, length 3,
	// message_seq 2, fragment_offset 3, fragment_length 3.
	const handshakeHeaderLen = 12
	return len(b) >= dtlsHeaderLen+handshakeHeaderLen &&
		b[0] == ContentHandshake && b[1] == 0xFE &&
		b[3] == 0 && b[4] == 0 && // epoch 0
		b[dtlsHeaderLen] == 1 && // client_hello
		b[dtlsHeaderLen+6] == 0 && b[dtlsHeaderLen+7] == 0 && b[dtlsHeaderLen+8] == 0 // fragment_offset 0
}

// DTLSCID returns the node id carried by the Connection ID of the first
// record of a DTLS datagram, given the fixed CID length used by the
// backends: the first two CID bytes, big endian.
//
// It reports false unless the first record is a DTLS 1.2 (0xFEFD) tls12_cid
// record of a non-zero epoch (CIDs are only used once a session is
// established) whose header and body fit in b, and unless 2 <= cidLen <= 255.
// A tls12_cid record is laid out as type (1), version (2), epoch (2),
// sequence number (6), CID (cidLen), length (2), encrypted body (length).
func DTLSCID(b []byte, cidLen int) (nodeID uint16, ok bool) {
	if cidLen < 2 || cidLen > MaxCIDLen {
		return 0, false
	}
	end := cidOffset + cidLen + 2 // end of the record header
	if len(b) < end || b[0] != ContentTLS12CID || b[1] != 0xFE || b[2] != 0xFD || (b[3] == 0 && b[4] == 0) {
		return 0, false
	}
	if int(binary.BigEndian.Uint16(b[end-2:end])) > len(b)-end {
		return 0, false
	}
	return binary.BigEndian.Uint16(b[cidOffset : cidOffset+2]), true
}

// CoAP message types and the empty-message code.
const (
	coapVersion = 1
	coapCON     = 0
	coapRST     = 3
	coapEmpty   = 0x00 // code 0.00
)

// CoAPPingLen is the length of a CoAP ping and of its reset.
const CoAPPingLen = 4

// AppendCoAPPing appends a CoAP ping, an empty confirmable message (version
// 1, type CON, token length 0, code 0.00) with the given message id, to b
// and returns the extended slice.
func AppendCoAPPing(b []byte, mid uint16) []byte {
	return append(b, coapVersion<<6|coapCON<<4, coapEmpty, byte(mid>>8), byte(mid))
}

// AppendCoAPReset appends the answer to a CoAP ping, an empty reset message
// with the given message id, to b and returns the extended slice.
func AppendCoAPReset(b []byte, mid uint16) []byte {
	return append(b, coapVersion<<6|coapRST<<4, coapEmpty, byte(mid>>8), byte(mid))
}

// IsCoAPPing reports whether b is a CoAP ping and returns its message id.
// An empty message has nothing after the message id (RFC 7252, section 4.1).
func IsCoAPPing(b []byte) (mid uint16, ok bool) {
	if len(b) != CoAPPingLen || b[0] != coapVersion<<6|coapCON<<4 || b[1] != coapEmpty {
		return 0, false
	}
	return binary.BigEndian.Uint16(b[2:4]), true
}

// IsCoAPReset reports whether b is an empty CoAP reset message with the given
// message id, the answer to a ping sent with that id.
func IsCoAPReset(b []byte, mid uint16) bool {
	return len(b) == CoAPPingLen && b[0] == coapVersion<<6|coapRST<<4 && b[1] == coapEmpty &&
		binary.BigEndian.Uint16(b[2:4]) == mid
}

// IsCoAP reports whether b starts like a CoAP message over UDP: version 1, a
// token length of at most 8 and room for the header and the token.
func IsCoAP(b []byte) bool {
	if len(b) < 4 || b[0]>>6 != coapVersion {
		return false
	}
	tkl := int(b[0] & 0x0F)
	return tkl <= 8 && len(b) >= 4+tkl
}

// DTLS handshake message types (RFC 6347, section 4.3.2).
const (
	handshakeClientHello        = 1
	handshakeServerHello        = 2
	handshakeHelloVerifyRequest = 3
	// handshakeHeaderLen is msg_type 1, length 3, message_seq 2,
	// fragment_offset 3, fragment_length 3.
	handshakeHeaderLen = 12
)

// DTLSSeqOffset is the offset of the 48-bit record sequence number in a
// DTLS 1.2 record header without CID.
const DTLSSeqOffset = 5

// MaxDTLSSeq is the largest record sequence number.
const MaxDTLSSeq = 1<<48 - 1

// Cipher suites offered by [AppendDTLSClientHello]: the PSK suites of
// LwM2M (CoAP's mandatory TLS_PSK_WITH_AES_128_CCM_8 first) and
// certificate suites, so that PSK, certificate and mixed servers all find
// one they can select.
var helloCipherSuites = [...]uint16{
	0xC0A8, // TLS_PSK_WITH_AES_128_CCM_8
	0x00A8, // TLS_PSK_WITH_AES_128_GCM_SHA256
	0xC0AE, // TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
	0xC02B, // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
}

// helloExtensions are the ClientHello's extensions: supported_groups
// (secp256r1, x25519) and ec_point_formats (uncompressed) for the ECDHE
// suites, signature_algorithms (ecdsa_secp256r1_sha256) for ECDSA, and
// extended_master_secret for servers that require it (RFC 7627).
var helloExtensions = [...]byte{
	0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x17, 0x00, 0x1d, // supported_groups
	0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats
	0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03, // signature_algorithms
	0x00, 0x17, 0x00, 0x00, // extended_master_secret
}

// DTLSClientHelloLen is the length of the record made by
// [AppendDTLSClientHello].
const DTLSClientHelloLen = dtlsHeaderLen + handshakeHeaderLen + dtlsClientHelloBodyLen

// dtlsClientHelloBodyLen: client_version 2, random 32, session_id 1 (empty),
// cookie 1 (empty), cipher_suites 2+2n, compression_methods 2 (null),
// extensions 2+len.
const dtlsClientHelloBodyLen = 2 + 32 + 1 + 1 + 2 + 2*len(helloCipherSuites) + 2 + 2 + len(helloExtensions)

// AppendDTLSClientHello appends to b a datagram holding one DTLS 1.2 record
// of epoch 0 and sequence number seq (masked to 48 bits) with a complete,
// unfragmented ClientHello: version DTLS 1.2, the given random, no session
// id, no cookie, the cipher suites above and the null compression method.
// It is the opening of a handshake a DTLS server answers with a
// HelloVerifyRequest (or, with cookies off, a ServerHello), or with an alert.
func AppendDTLSClientHello(b []byte, random *[32]byte, seq uint64) []byte {
	const n = dtlsClientHelloBodyLen
	b = append(b,
		ContentHandshake, 0xFE, 0xFD, // type, version DTLS 1.2
		0, 0, // epoch
		byte(seq>>40), byte(seq>>32), byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq),
		byte((handshakeHeaderLen+n)>>8), byte(handshakeHeaderLen+n), // record length
		handshakeClientHello, 0, byte(n>>8), byte(n), // msg_type, length
		0, 0, // message_seq
		0, 0, 0, // fragment_offset
		0, byte(n>>8), byte(n), // fragment_length
		0xFE, 0xFD, // client_version
	)
	b = append(b, random[:]...)
	b = append(b, 0, 0, 0, byte(2*len(helloCipherSuites))) // session_id, cookie, cipher_suites length
	for _, cs := range helloCipherSuites {
		b = append(b, byte(cs>>8), byte(cs))
	}
	b = append(b, 1, 0, 0, byte(len(helloExtensions))) // compression_methods: null; extensions length
	return append(b, helloExtensions[:]...)
}

// DTLSHelloAnswer is how a DTLS server answered a ClientHello.
type DTLSHelloAnswer uint8

// Answers to a ClientHello.
const (
	// NotDTLSHelloAnswer: the datagram is not an answer to a ClientHello.
	NotDTLSHelloAnswer DTLSHelloAnswer = iota
	// DTLSHelloVerifyRequest: the server asks for a cookie (RFC 6347,
	// section 4.2.1).
	DTLSHelloVerifyRequest
	// DTLSServerHello: the server goes on with the handshake (cookies off).
	DTLSServerHello
	// DTLSAlert: the server refused the ClientHello with a plaintext
	// alert, for example handshake_failure when no cipher suite matched.
	DTLSAlert
)

// String returns "hello_verify_request", "server_hello", "alert" or "none".
func (a DTLSHelloAnswer) String() string {
	switch a {
	case DTLSHelloVerifyRequest:
		return "hello_verify_request"
	case DTLSServerHello:
		return "server_hello"
	case DTLSAlert:
		return "alert"
	}
	return "none"
}

// ParseDTLSHelloAnswer recognises a server's answer to a ClientHello from
// the first record of b and returns its kind and record sequence number
// (0 unless the kind is not NotDTLSHelloAnswer).
//
// The first record must be a DTLS 1.0 or 1.2 record (versions 0xFEFF and
// 0xFEFD: servers may send a HelloVerifyRequest as DTLS 1.0) of epoch 0
// that fits in b and holds either a handshake message, a HelloVerifyRequest
// or the first fragment of a ServerHello with room for its fixed fields, or
// a two-byte alert of level warning (1) or fatal (2).
func ParseDTLSHelloAnswer(b []byte) (a DTLSHelloAnswer, seq uint64) {
	if len(b) < dtlsHeaderLen || b[1] != 0xFE || (b[2] != 0xFD && b[2] != 0xFF) || b[3] != 0 || b[4] != 0 {
		return NotDTLSHelloAnswer, 0
	}
	n := int(binary.BigEndian.Uint16(b[11:13]))
	if n > len(b)-dtlsHeaderLen {
		return NotDTLSHelloAnswer, 0
	}
	body := b[dtlsHeaderLen : dtlsHeaderLen+n]
	switch b[0] {
	case ContentAlert:
		if n != 2 || (body[0] != 1 && body[0] != 2) {
			return NotDTLSHelloAnswer, 0
		}
		a = DTLSAlert
	case ContentHandshake:
		if n < handshakeHeaderLen || body[6]|body[7]|body[8] != 0 { // fragment_offset 0
			return NotDTLSHelloAnswer, 0
		}
		length := int(body[1])<<16 | int(body[2])<<8 | int(body[3])
		frag := int(body[9])<<16 | int(body[10])<<8 | int(body[11])
		if frag > length || frag > n-handshakeHeaderLen {
			return NotDTLSHelloAnswer, 0
		}
		msg := body[handshakeHeaderLen : handshakeHeaderLen+frag]
		switch body[0] {
		case handshakeHelloVerifyRequest:
			// server_version 2, cookie<0..255>, whole.
			if frag != length || frag < 3 || msg[0] != 0xFE || 3+int(msg[2]) > frag {
				return NotDTLSHelloAnswer, 0
			}
			a = DTLSHelloVerifyRequest
		case handshakeServerHello:
			// server_version 2, random 32, session_id length 1,
			// cipher_suite 2, compression_method 1.
			if frag < 38 || msg[0] != 0xFE {
				return NotDTLSHelloAnswer, 0
			}
			a = DTLSServerHello
		default:
			return NotDTLSHelloAnswer, 0
		}
	default:
		return NotDTLSHelloAnswer, 0
	}
	return a, uint64(b[5])<<40 | uint64(b[6])<<32 | uint64(b[7])<<24 | uint64(b[8])<<16 | uint64(b[9])<<8 | uint64(b[10])
}
