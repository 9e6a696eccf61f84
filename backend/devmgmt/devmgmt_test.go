package devmgmt

import (
	"testing"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/lwm2mcluster/lwm2m/backend/codec"
	"github.com/lwm2mcluster/lwm2m/backend/linkformat"
	"github.com/lwm2mcluster/lwm2m/backend/registration"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

func TestPickFormat(t *testing.T) {
	reg := func(ver, ct string) *registration.Registration {
		r := &registration.Registration{Version: ver}
		if ct != "" {
			r.ObjLinks = []linkformat.Link{{URL: "/", Attrs: map[string]string{"rt": "oma.lwm2m", "ct": ct}}}
		}
		return r
	}
	f := func(v uint16) *uint16 { return &v }
	for _, c := range []struct {
		reg  *registration.Registration
		req  northbound.Req
		want uint16
	}{
		{reg("1.1", ""), northbound.Req{Kind: "read"}, codec.SenMLCBOR},
		{reg("1.0", ""), northbound.Req{Kind: "read"}, codec.TLV},
		{reg("1.1", "11542 11543"), northbound.Req{Kind: "read"}, codec.TLV},
		{reg("1.1", "110"), northbound.Req{Kind: "read"}, codec.SenMLJSON},
		{reg("1.0", "11543"), northbound.Req{Kind: "read"}, codec.LwM2MJSON},
		{reg("1.1", "110"), northbound.Req{Kind: "read", ContentFormat: f(0)}, codec.TextPlain},
		{nil, northbound.Req{Kind: "read"}, codec.TLV},
		{reg("1.1", ""), northbound.Req{Kind: "readComposite"}, codec.SenMLCBOR},
		{reg("1.1", "110 11542"), northbound.Req{Kind: "observeComposite"}, codec.SenMLJSON},
	} {
		if got := PickFormat(c.reg, &c.req); got != c.want {
			t.Errorf("PickFormat(%+v, %+v) = %d, want %d", c.reg, c.req, got, c.want)
		}
	}
}

func TestCodeName(t *testing.T) {
	for c, want := range map[codes.Code]string{
		codes.Content: "CONTENT", codes.Changed: "CHANGED", codes.NotFound: "NOT_FOUND",
		codes.UnsupportedMediaType: "UNSUPPORTED_CONTENT_FORMAT", codes.InternalServerError: "INTERNAL_SERVER_ERROR",
		codes.Code(0x7f): "CODE_3_31",
	} {
		if got := CodeName(c); got != want {
			t.Errorf("CodeName(%v) = %q, want %q", c, got, want)
		}
	}
	if !Success(codes.Created) || Success(codes.BadRequest) {
		t.Fatal("Success")
	}
}

func TestUriPathUnderRoot(t *testing.T) {
	if got := uriPath(&registration.Registration{Root: "/lwm2m"}, "/3/0"); got != "/lwm2m/3/0" {
		t.Fatalf("got %q", got)
	}
	if got := uriPath(&registration.Registration{Root: "/"}, "/3/0"); got != "/3/0" {
		t.Fatalf("got %q", got)
	}
}
