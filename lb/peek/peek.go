// Package peek holds the small parsers the balancer applies to every
// datagram: recognising DTLS records and extracting the node id from a DTLS
// Connection ID (RFC 9146), and building and recognising the CoAP ping used
// for health checks (RFC 7252, section 4.2 and 4.3).
//
// The functions only read their input, never allocate and never panic,
// whatever the input.
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
