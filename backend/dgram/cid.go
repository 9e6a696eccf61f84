package dgram

import (
	"github.com/pion/dtls/v3/pkg/protocol"
	"github.com/pion/dtls/v3/pkg/protocol/extension"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
)

// serverHelloCID returns the Connection ID a server issues in an outgoing
// ServerHello (the CID its peer will put in its records), if p carries one.
func serverHelloCID(p []byte) ([]byte, bool) {
	pkts, err := recordlayer.UnpackDatagram(p)
	if err != nil || len(pkts) == 0 {
		return nil, false
	}
	var h recordlayer.Header
	if err := h.Unmarshal(pkts[0]); err != nil || h.ContentType != protocol.ContentTypeHandshake {
		return nil, false
	}
	for _, pkt := range pkts {
		if len(pkt) < recordlayer.FixedHeaderSize+handshake.HeaderLength {
			continue
		}
		var hh handshake.Header
		if err := hh.Unmarshal(pkt[recordlayer.FixedHeaderSize:]); err != nil || hh.Type != handshake.TypeServerHello {
			continue
		}
		var sh handshake.MessageServerHello
		if err := sh.Unmarshal(pkt[recordlayer.FixedHeaderSize+handshake.HeaderLength:]); err != nil {
			continue
		}
		for _, ext := range sh.Extensions {
			if e, ok := ext.(*extension.ConnectionID); ok && len(e.CID) > 0 {
				return e.CID, true
			}
		}
	}
	return nil, false
}
