package northbound_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

var fuzzRequestSeeds = []string{
	seedRequest,
	reqJSON(`{"kind":"read","path":"/3/0/1","contentFormat":1541,"timeout":1000}`),
	reqJSON(`{"kind":"discover","path":"/3"}`),
	reqJSON(`{"kind":"observe","path":"/3303/0/5700"}`),
	reqJSON(`{"kind":"delete","path":"/3303/1"}`),
	reqJSON(`{"kind":"execute","path":"/5/0/2","arguments":"0='abc',1"}`),
	reqJSON(`{"kind":"write","path":"/3/0","mode":"update","node":` + nodeInstance0 + `}`),
	reqJSON(`{"kind":"write","path":"/3/0/6/1","node":` + nodeRI + `}`),
	reqJSON(`{"kind":"create","path":"/3303","node":` + nodeInstance1 + `}`),
	reqJSON(`{"kind":"writeAttributes","path":"/3/0/9","attributes":{"pmin":1,"pmax":2,"gt":1.5,"lt":-1e3,"st":0,"unset":["epmin"]}}`),
	reqJSON(`{"kind":"cancelObserve","observeTicket":"x"}`),
	reqJSON(`{"kind":"cancelObserve","path":"/3"}`),
	reqJSON(`{"kind":"readComposite","paths":["/3/0/0","/"]}`),
	reqJSON(`{"kind":"observeComposite","paths":["/3303"],"contentFormat":112}`),
	reqJSON(`{"kind":"writeComposite","nodes":{"/3/0/13":` + nodeTime + `}}`),
	reqJSON(`{"kind":"read","path":"/3","paths":[],"nodes":{}}`),
	`{"ticket":"t","ep":"e","req":{"kind":}}`,
	`{"ep":5,"ticket":"t"}`,
	`{}`, `null`, ``,
}

// FuzzParseRequest checks that ParseRequest never panics, that its errors
// are well-formed, and that an accepted request marshals to a document that
// parses to the same request (parsing is idempotent: normalisation of paths,
// formats and the write mode happens once).
func FuzzParseRequest(f *testing.F) {
	for _, s := range fuzzRequestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := northbound.ParseRequest(data)
		if err != nil {
			var re *northbound.RequestError
			if r != nil || !errors.As(err, &re) || !errors.Is(err, northbound.ErrBadRequest) {
				t.Fatalf("bad error %T %v (request %v)", err, err, r)
			}
			if re.Ticket != "" {
				if len(re.Ticket) > northbound.MaxTicketLen {
					t.Fatalf("RequestError carries a ticket of %d bytes", len(re.Ticket))
				}
				for i := 0; i < len(re.Ticket); i++ {
					if c := re.Ticket[i]; c <= ' ' || c > '~' {
						t.Fatalf("RequestError carries ticket %q", re.Ticket)
					}
				}
			}
			return
		}
		b1, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal accepted request %q: %v", data, err)
		}
		r2, err := northbound.ParseRequest(b1)
		if err != nil {
			t.Fatalf("re-parse of %s (from %q): %v", b1, data, err)
		}
		b2, err := json.Marshal(r2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b1, b2) {
			t.Fatalf("not stable:\n%s\n%s", b1, b2)
		}
		if r2.Req.TimeoutMs() <= 0 || r2.Req.TimeoutMs() > northbound.MaxTimeoutMs {
			t.Fatalf("timeout %d", r2.Req.TimeoutMs())
		}
	})
}

// FuzzParseResponse checks that ParseResponse never panics and that an
// accepted response has a ticket and exactly one of ack, err, resp, and
// survives a marshal and re-parse unchanged.
func FuzzParseResponse(f *testing.F) {
	for _, s := range []string{seedAck, seedErr, seedResp, seedRespError,
		`{"ticket":"t","resp":{"kind":"readComposite","code":"CONTENT","nodes":{"/3/0/13":` + nodeTime + `}}}`,
		`{"ticket":"t","resp":{"kind":"discover","code":"CONTENT","objectLinks":[{"url":"/3/0","at":{"dim":"2"}}]}}`,
		`{"ticket":"t","resp":{"kind":"observe","code":"CONTENT","node":` + nodeObject + `,"observe":true,"timestamp":1}}`,
		`{"ticket":"t","ack":true,"err":{}}`, `{}`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := northbound.ParseResponse(data)
		if err != nil {
			if r != nil {
				t.Fatal("response with error")
			}
			return
		}
		n := 0
		for _, set := range []bool{r.Ack, r.Err != nil, r.Resp != nil} {
			if set {
				n++
			}
		}
		if r.Ticket == "" || n != 1 {
			t.Fatalf("accepted %q as %+v", data, r)
		}
		b1, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal accepted response %q: %v", data, err)
		}
		r2, err := northbound.ParseResponse(b1)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", b1, err)
		}
		b2, err := json.Marshal(r2)
		if err != nil || !bytes.Equal(b1, b2) {
			t.Fatalf("not stable:\n%s\n%s (%v)", b1, b2, err)
		}
	})
}
