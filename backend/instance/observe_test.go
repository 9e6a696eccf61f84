package instance

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/bench/simdevice"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// TestTimestampedNotification: a notification carrying values recorded at
// two times (SenML "bt"/"t") becomes two resps on the observe's ticket,
// oldest first, each with its "timestamp".
func TestTimestampedNotification(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in, err := Start(ctx, Options{CoAPAddr: "127.0.0.1:0", InstanceID: "ts", Logger: quiet, ModelsDir: "../../e2e/testdata/models"})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Stop(context.Background())

	var mu sync.Mutex
	var token message.Token
	var conn *udpClient.Conn
	observed := make(chan struct{})
	router := mux.NewRouter()
	_ = router.Handle("/3303/0/5700", mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) {
		mu.Lock()
		token, conn = append(message.Token(nil), r.Token()...), w.Conn().(*udpClient.Conn)
		mu.Unlock()
		_ = w.SetResponse(codes.Content, message.AppSenmlJSON, bytes.NewReader([]byte(`[{"n":"/3303/0/5700","v":20.5}]`)))
		w.Message().SetObserve(1)
		close(observed)
	}))
	rawDevice(t, in, router, "ts-dev", `</3303/0>`)

	c := nbclient.New(in.Bus(), in.Store(), nbclient.Options{})
	defer c.Close()
	senml := uint16(110)
	obs, err := c.Observe(ctx, "ts-dev", northbound.Req{Kind: northbound.KindObserve, Path: "/3303/0/5700", ContentFormat: &senml})
	if err != nil {
		t.Fatal(err)
	}
	<-observed
	mu.Lock()
	n := conn.AcquireMessage(ctx)
	n.SetCode(codes.Content)
	n.SetToken(token)
	n.SetType(message.NonConfirmable)
	n.SetMessageID(conn.GetMessageID())
	n.SetObserve(2)
	n.SetContentFormat(message.AppSenmlJSON)
	n.SetBody(bytes.NewReader([]byte(`[{"bn":"/3303/0/5700","bt":1700000000,"v":21.5},{"t":10,"v":22.5}]`)))
	err = conn.WriteMessage(n)
	conn.ReleaseMessage(n)
	mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		ts int64
		v  float64
	}{{1700000000000, 21.5}, {1700000010000, 22.5}} {
		select {
		case r := <-obs.C():
			if r.Node == nil {
				t.Fatalf("notification without a node: %+v", r)
			}
			res, ok := r.Node.Node.(node.Resource)
			if !ok || !res.Value.Equal(node.FloatValue(want.v)) || r.Timestamp != want.ts || !r.Observe {
				t.Fatalf("notification %+v (node %v), want %v at %d", r, r.Node, want.v, want.ts)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no notification for %v", want)
		}
	}
}

// TestObserveWithoutObserveOption: a device that answers an observe with a
// plain 2.05 (no Observe option, RFC 7641 section 4.1) gives its value, but
// no observation is kept.
func TestObserveWithoutObserveOption(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := startInstance(t, ctx, Options{InstanceID: "noobs"})
	router := mux.NewRouter()
	_ = router.Handle("/3/0/0", mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) {
		_ = w.SetResponse(codes.Content, message.TextPlain, bytes.NewReader([]byte("ACME")))
	}))
	rawDevice(t, in, router, "noobs-dev", `</3/0>`)
	c := nbclient.New(in.Bus(), in.Store(), nbclient.Options{})
	defer c.Close()
	text := uint16(0)
	r, err := c.Do(ctx, "noobs-dev", northbound.Req{Kind: northbound.KindObserve, Path: "/3/0/0", ContentFormat: &text})
	if err != nil || r.Code != "CONTENT" || r.Node == nil {
		t.Fatalf("observe: %v %+v", err, r)
	}
	reg, err := in.Store().GetByEndpoint(ctx, "noobs-dev")
	if err != nil {
		t.Fatal(err)
	}
	if obs, err := in.Store().ObservationsByRegistration(ctx, reg.ID); err != nil || len(obs) != 0 {
		t.Fatalf("observations kept: %d (%v), want none", len(obs), err)
	}
}

// TestObservesOfOnePathKeepTheNewest: observes of the same path replace
// one another; when two are established at once exactly the newer one
// stays, never none.
func TestObservesOfOnePathKeepTheNewest(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := startInstance(t, ctx, Options{InstanceID: "newest"})
	d := simdevice.New(simdevice.Config{Endpoint: "newest-dev", Server: in.CoAPAddr().String(), Logger: quiet, MaxObservations: 1000})
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Register(ctx); err != nil {
		t.Fatal(err)
	}
	reg, err := in.Store().GetByEndpoint(ctx, "newest-dev")
	if err != nil {
		t.Fatal(err)
	}
	c := nbclient.New(in.Bus(), in.Store(), nbclient.Options{})
	defer c.Close()
	text := uint16(0)
	req := northbound.Req{Kind: northbound.KindObserve, Path: "/3/0/0", ContentFormat: &text}
	for round := range 15 {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := c.Do(ctx, "newest-dev", req)
				if err == nil && r.Code != "CONTENT" {
					err = fmt.Errorf("observe answered %s", r.Code)
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		obs, err := in.Store().ObservationsByRegistration(ctx, reg.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(obs) != 1 {
			for _, o := range obs {
				t.Logf("kept: %x created %d ticket %s", o.Token, o.Created, o.Ticket)
			}
			t.Fatalf("round %d: %d observations of /3/0/0 kept, want exactly 1", round, len(obs))
		}
	}
}

// TestCancelCompositeObservation: cancelling an Observe-Composite tells the
// device at once (a FETCH of the paths with Observe 1), as for a single
// path, instead of waiting for its next notification to be reset.
func TestCancelCompositeObservation(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := startInstance(t, ctx, Options{InstanceID: "cancelc"})
	d := simdevice.New(simdevice.Config{Endpoint: "cancelc-dev", Server: in.CoAPAddr().String(), Logger: quiet})
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Register(ctx); err != nil {
		t.Fatal(err)
	}
	c := nbclient.New(in.Bus(), in.Store(), nbclient.Options{})
	defer c.Close()
	obs, err := c.Observe(ctx, "cancelc-dev", northbound.Req{Kind: northbound.KindObserveComposite, Paths: []string{"/3/0/0", "/3/0/1"}})
	if err != nil || obs.First().Code != "CONTENT" {
		t.Fatalf("observe-composite: %v %+v", err, obs.First())
	}
	if n := d.Observations(); n != 1 {
		t.Fatalf("device holds %d observations, want 1", n)
	}
	if err := obs.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if n := d.Count(simdevice.OpCancelObserve); n != 1 {
		t.Fatalf("device got %d cancel requests, want 1", n)
	}
	if n := d.Observations(); n != 0 {
		t.Fatalf("device still holds %d observations after the cancel", n)
	}
	if got := d.LastRequest(); got.Op != simdevice.OpCancelObserve || got.Code != codes.FETCH || got.Response != codes.Content {
		t.Fatalf("last request %+v, want a composite cancel (FETCH) answered 2.05", got)
	}
}
