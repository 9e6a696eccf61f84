package instance

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapoptions "github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
)

// startInstance starts an instance for a test (CoAP on a free loopback
// port, quiet logs unless o says otherwise) and stops it with the test.
func startInstance(t *testing.T, ctx context.Context, o Options) *Instance {
	t.Helper()
	if o.CoAPAddr == "" {
		o.CoAPAddr = "127.0.0.1:0"
	}
	if o.Logger == nil {
		o.Logger = quiet
	}
	in, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Stop(context.Background()) })
	return in
}

// rawDevice dials the instance with a go-coap client serving router (plus
// opts) and registers it as ep (LwM2M 1.1 unless queries say otherwise)
// with the link-format payload links. It is closed with the test.
func rawDevice(t *testing.T, in *Instance, router *mux.Router, ep, links string, opts ...udp.Option) *udpClient.Conn {
	t.Helper()
	dev, err := udp.Dial(in.CoAPAddr().String(), append([]udp.Option{coapoptions.WithMux(router)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := dev.Post(ctx, "/rd", message.AppLinkFormat, bytes.NewReader([]byte(links)),
		message.Option{ID: message.URIQuery, Value: []byte("ep=" + ep)},
		message.Option{ID: message.URIQuery, Value: []byte("lwm2m=1.1")})
	if err != nil {
		t.Fatalf("register %s: %v", ep, err)
	}
	if resp.Code() != codes.Created {
		t.Fatalf("register %s with a %d-byte payload: %v", ep, len(links), resp.Code())
	}
	return dev
}
