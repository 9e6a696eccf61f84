package dgram

import "testing"

// FuzzServerHelloCID: the ServerHello peek never panics, and whatever it
// returns is a non-empty CID taken from the input.
func FuzzServerHelloCID(f *testing.F) {
	f.Add([]byte{22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 4, 2, 0, 0, 0})
	f.Add([]byte{25, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if cid, ok := serverHelloCID(b); ok && len(cid) == 0 {
			t.Fatal("empty CID reported")
		}
		l := &Listener{cfg: Config{CIDLen: 8}}
		if cid, ok := l.cid(b); ok && len(cid) != 8 {
			t.Fatalf("CID of %d bytes", len(cid))
		}
	})
}
