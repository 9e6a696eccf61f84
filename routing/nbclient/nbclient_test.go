package nbclient_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/node"
	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient/nbtest"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

var testOpts = nbclient.Options{AckTimeout: 2 * time.Second, DirectAckTimeout: 300 * time.Millisecond,
	ResponseMargin: 500 * time.Millisecond}

// manufacturer answers reads with /3/0/0 and everything else with CHANGED.
func manufacturer(r *northbound.Request) (*northbound.Resp, error) {
	switch r.Req.Kind {
	case northbound.KindRead, northbound.KindObserve:
		n := node.NewSingle(0, node.StringValue("Open Mobile Alliance"))
		return &northbound.Resp{Code: nbclient.CodeContent, Node: &node.Any{Node: n}}, nil
	}
	return &northbound.Resp{Code: nbclient.CodeChanged}, nil
}

type cluster struct {
	t      *testing.T
	bus    northbound.Bus
	st     store.Store
	claims *nbtest.Claims
	client *nbclient.Client
}

func newCluster(t *testing.T, opts nbclient.Options) *cluster {
	b := northbound.NewBroker()
	t.Cleanup(func() { _ = b.Close() })
	st := memstore.New(time.Second)
	c := &cluster{t: t, bus: b, st: st, claims: nbtest.NewClaims()}
	c.client = nbclient.New(b, st, opts)
	t.Cleanup(func() { _ = c.client.Close() })
	return c
}

// member announces id and makes it the owner of eps.
func (c *cluster) member(id string, eps ...string) {
	c.t.Helper()
	ctx := context.Background()
	if err := c.st.Announce(ctx, store.Member{ID: id, State: store.StateActive}, time.Minute); err != nil {
		c.t.Fatal(err)
	}
	for _, ep := range eps {
		if err := c.st.SetOwner(ctx, ep, id); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *cluster) responder(id string, h nbtest.Handler, eps ...string) *nbtest.Responder {
	r := nbtest.New(c.bus, id, c.claims, eps...)
	r.Handler = h
	return r
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func channels(rs []nbtest.Received) []string {
	var l []string
	for _, r := range rs {
		l = append(l, r.Channel)
	}
	return l
}

func readReq() northbound.Req { return northbound.Req{Kind: northbound.KindRead, Path: "/3/0/0"} }

func checkManufacturer(t *testing.T, resp *northbound.Resp) {
	t.Helper()
	if resp == nil || resp.Code != "CONTENT" || resp.Node == nil {
		t.Fatalf("resp = %+v", resp)
	}
	if v, _ := resp.Node.Node.(node.Resource).Value.AsString(); v != "Open Mobile Alliance" {
		t.Fatalf("node = %v", resp.Node.Node)
	}
}

func TestDirectWhenOwnerAlive(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1")
	c.member("inst-b")
	a := c.responder("inst-a", manufacturer, "dev1").Start(t)
	b := c.responder("inst-b", manufacturer).Start(t)
	b.AnswerUnowned = true
	if ch, direct := c.client.Route(ctxT(t), "dev1"); ch != "LESHAN_REQ:inst-a" || !direct {
		t.Fatalf("Route = %s %v", ch, direct)
	}
	resp, err := c.client.Do(ctxT(t), "dev1", readReq())
	if err != nil {
		t.Fatal(err)
	}
	checkManufacturer(t, resp)
	if got := channels(a.Received()); len(got) != 1 || got[0] != "LESHAN_REQ:inst-a" {
		t.Fatalf("owner received on %v", got)
	}
	time.Sleep(50 * time.Millisecond)
	if got := b.Received(); len(got) != 0 {
		t.Fatalf("other instance received %v", channels(got))
	}
	r := a.Received()[0].Request
	if r.Endpoint != "dev1" || len(r.Ticket) != 32 || r.Req.Path != "/3/0/0" {
		t.Fatalf("request = %+v", r)
	}
}

func TestFanOutWhenOwnerUnknownOrDead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(c *cluster)
	}{
		{"no owner", func(c *cluster) {}},
		{"owner not a member", func(c *cluster) {
			if err := c.st.SetOwner(context.Background(), "dev1", "inst-gone"); err != nil {
				t.Fatal(err)
			}
		}},
		{"no owners lookup", func(c *cluster) {
			c.client = nbclient.New(c.bus, nil, testOpts)
			t.Cleanup(func() { _ = c.client.Close() })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, testOpts)
			c.member("inst-b")
			tc.setup(c)
			a := c.responder("inst-a", manufacturer, "dev1").Start(t)
			b := c.responder("inst-b", manufacturer).Start(t)
			b.AnswerUnowned = true
			if ch, direct := c.client.Route(ctxT(t), "dev1"); ch != "LESHAN_REQ" || direct {
				t.Fatalf("Route = %s %v", ch, direct)
			}
			resp, err := c.client.Do(ctxT(t), "dev1", readReq())
			if err != nil {
				t.Fatal(err)
			}
			checkManufacturer(t, resp)
			if got := channels(a.Received()); len(got) != 1 || got[0] != "LESHAN_REQ" {
				t.Fatalf("owner received on %v", got)
			}
			if got := channels(b.WaitReceived(t, 1)); len(got) != 1 || got[0] != "LESHAN_REQ" {
				t.Fatalf("other received on %v", got)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1", "dev2")
	c.responder("inst-a", func(r *northbound.Request) (*northbound.Resp, error) {
		if r.Endpoint == "dev2" {
			return nil, errors.New("timeout: the device did not answer within 5000 ms")
		}
		return &northbound.Resp{Code: nbclient.CodeNotFound, ErrorMessage: "no such object"}, nil
	}, "dev1", "dev2").Start(t)
	b := c.responder("inst-b", nil).Start(t)
	b.AnswerUnowned = true
	ctx := ctxT(t)

	// A device error code is a resp.
	resp, err := c.client.Do(ctx, "dev1", northbound.Req{Kind: northbound.KindRead, Path: "/9"})
	if err != nil || resp.Code != "NOT_FOUND" || resp.ErrorMessage != "no such object" || nbclient.IsSuccess(resp.Code) {
		t.Fatalf("Do = %+v, %v", resp, err)
	}
	// An err is a *RemoteError.
	_, err = c.client.Do(ctx, "dev2", readReq())
	var re *nbclient.RemoteError
	if !errors.As(err, &re) || re.Message != "timeout: the device did not answer within 5000 ms" ||
		err.Error() != "server error: timeout: the device did not answer within 5000 ms" {
		t.Fatalf("Do = %v", err)
	}
	// An unregistered endpoint: exactly one err, without ack.
	_, err = c.client.Do(ctx, "dev9", readReq())
	if !errors.As(err, &re) || re.Message != `endpoint "dev9" is not registered` {
		t.Fatalf("Do = %v", err)
	}
	// A bad request fails before publishing.
	n := len(b.Received())
	_, err = c.client.Do(ctx, "dev1", northbound.Req{Kind: northbound.KindRead, Path: "/3/0/"})
	if !errors.Is(err, northbound.ErrBadRequest) {
		t.Fatalf("bad request: %v", err)
	}
	_, err = c.client.Do(ctx, "", readReq())
	if !errors.Is(err, northbound.ErrBadRequest) {
		t.Fatalf("no endpoint: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	if len(b.Received()) != n {
		t.Fatal("a bad request was published")
	}
}

func TestNoAck(t *testing.T) {
	opts := testOpts
	opts.AckTimeout = 300 * time.Millisecond
	c := newCluster(t, opts)
	start := time.Now()
	_, err := c.client.Do(ctxT(t), "dev1", readReq())
	if !errors.Is(err, nbclient.ErrNoAck) || !strings.Contains(err.Error(), "no instance acknowledged") {
		t.Fatalf("Do = %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Fatalf("failed after %v", d)
	}
}

func TestResponseTimeout(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1")
	c.responder("inst-a", func(*northbound.Request) (*northbound.Resp, error) { return nil, nil }, "dev1").Start(t)
	timeout := int64(100)
	start := time.Now()
	_, err := c.client.Do(ctxT(t), "dev1", northbound.Req{Kind: northbound.KindRead, Path: "/3", Timeout: &timeout})
	if !errors.Is(err, nbclient.ErrTimeout) {
		t.Fatalf("Do = %v", err)
	}
	if d := time.Since(start); d < 600*time.Millisecond || d > 5*time.Second {
		t.Fatalf("failed after %v, want the timeout plus the margin", d)
	}
	// ctx bounds the wait too.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.client.Do(ctx, "dev1", readReq()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do = %v", err)
	}
}

// TestDeadOwner: the owner is still a member but does not answer on its
// channel; the request goes again on fan-out, with the same ticket, and
// exactly one other instance answers an err.
func TestDeadOwner(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1")
	c.member("inst-b")
	c.member("inst-c")
	a := c.responder("inst-a", manufacturer, "dev1")
	a.Silent = true
	a.Start(t)
	b := c.responder("inst-b", nil).Start(t)
	b.AnswerUnowned = true
	cc := c.responder("inst-c", nil).Start(t)
	cc.AnswerUnowned = true
	_, err := c.client.Do(ctxT(t), "dev1", readReq())
	var re *nbclient.RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("Do = %v", err)
	}
	ra := a.WaitReceived(t, 2)
	if got := channels(ra); len(got) != 2 || got[0] != "LESHAN_REQ:inst-a" || got[1] != "LESHAN_REQ" {
		t.Fatalf("owner received on %v", got)
	}
	if ra[0].Request.Ticket != ra[1].Request.Ticket {
		t.Fatal("republished with another ticket")
	}
	if got := channels(b.WaitReceived(t, 1)); len(got) != 1 || got[0] != "LESHAN_REQ" {
		t.Fatalf("b received on %v", got)
	}
}

// TestSlowOwner: the owner acks after the direct-ack wait; the fan-out copy
// carries the same ticket and the request is carried out once.
func TestSlowOwner(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1")
	var calls atomic.Int32
	a := c.responder("inst-a", func(r *northbound.Request) (*northbound.Resp, error) {
		calls.Add(1)
		return manufacturer(r)
	}, "dev1")
	a.AckDelay = 500 * time.Millisecond
	a.Start(t)
	resp, err := c.client.Do(ctxT(t), "dev1", readReq())
	if err != nil {
		t.Fatal(err)
	}
	checkManufacturer(t, resp)
	time.Sleep(700 * time.Millisecond) // let the duplicate be handled
	if got := channels(a.Received()); len(got) != 2 {
		t.Fatalf("owner received on %v", got)
	}
	if calls.Load() != 1 {
		t.Fatalf("carried out %d times", calls.Load())
	}
	// No republication when it is disabled.
	opts := testOpts
	opts.DirectAckTimeout = -1
	c2 := nbclient.New(c.bus, c.st, opts)
	defer c2.Close()
	if _, err := c2.Do(ctxT(t), "dev1", readReq()); err != nil {
		t.Fatal(err)
	}
	if got := channels(a.Received()); len(got) != 3 {
		t.Fatalf("owner received on %v", got)
	}
}

func TestConcurrentAndForeignMessages(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1")
	c.responder("inst-a", func(r *northbound.Request) (*northbound.Resp, error) {
		return &northbound.Resp{Code: nbclient.CodeCreated, Location: r.Req.Path}, nil
	}, "dev1").Start(t)
	ctx := ctxT(t)
	// Noise on LESHAN_RESP: other clients' tickets, garbage.
	stop := make(chan struct{})
	var noise sync.WaitGroup
	noise.Add(1)
	go func() {
		defer noise.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = c.bus.Publish(ctx, northbound.ChannelResp, []byte(fmt.Sprintf(`{"ticket":"other%d","ack":true}`, i)))
			_ = c.bus.Publish(ctx, northbound.ChannelResp, []byte(`not json`))
			time.Sleep(time.Millisecond)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := fmt.Sprintf("/3303/%d", i)
			resp, err := c.client.Do(ctx, "dev1", northbound.Req{Kind: northbound.KindCreate, Path: "/3303",
				Node: &node.Any{Node: node.Instance{ID: uint16(i), Resources: []node.Resource{node.NewSingle(5700, node.FloatValue(1))}}}})
			switch {
			case err != nil:
				errs <- err
			case resp.Location != "/3303" || resp.Code != "CREATED":
				errs <- fmt.Errorf("%s: %+v", path, resp)
			}
		}()
	}
	wg.Wait()
	close(stop)
	noise.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestClose(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1")
	c.responder("inst-a", func(*northbound.Request) (*northbound.Resp, error) { return nil, nil }, "dev1").Start(t)
	if err := c.client.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.client.Do(ctxT(t), "dev1", readReq())
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if err := c.client.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, nbclient.ErrClosed) {
		t.Fatalf("in-flight Do = %v", err)
	}
	if _, err := c.client.Do(ctxT(t), "dev1", readReq()); !errors.Is(err, nbclient.ErrClosed) {
		t.Fatalf("Do after Close = %v", err)
	}
	if err := c.client.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestObserve(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1")
	a := c.responder("inst-a", manufacturer, "dev1").Start(t)
	ctx := ctxT(t)
	obs, err := c.client.Observe(ctx, "dev1", northbound.Req{Path: "/3/0/0"})
	if err != nil {
		t.Fatal(err)
	}
	checkManufacturer(t, obs.First())
	tickets := a.WaitObservations(t, 1)
	if tickets[0] != obs.Ticket() {
		t.Fatalf("observing %v, ticket %s", tickets, obs.Ticket())
	}
	for i := range 3 {
		n := node.NewSingle(0, node.StringValue(fmt.Sprint("v", i)))
		if err := a.Notify(ctx, obs.Ticket(), northbound.Resp{Code: "CONTENT", Node: &node.Any{Node: n}, Timestamp: int64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		select {
		case r := <-obs.C():
			if v, _ := r.Node.Node.(node.Resource).Value.AsString(); v != fmt.Sprint("v", i) || !r.Observe || r.Timestamp != int64(i+1) || r.Kind != "observe" {
				t.Fatalf("notification %d = %+v", i, r)
			}
		case <-ctx.Done():
			t.Fatal("no notification")
		}
	}
	if err := obs.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-obs.C(); ok {
		t.Fatal("C open after Cancel")
	}
	a.WaitObservations(t, 0)
	last := a.Received()[len(a.Received())-1].Request
	if last.Req.Kind != "cancelObserve" || last.Req.ObserveTicket != obs.Ticket() || last.Endpoint != "dev1" {
		t.Fatalf("cancel request = %+v", last)
	}
	if err := obs.Cancel(ctx); err != nil || obs.Err() != nil {
		t.Fatalf("second Cancel = %v, Err = %v", err, obs.Err())
	}
	select {
	case <-obs.Done():
	default:
		t.Fatal("Done not closed")
	}
}

func TestObserveContextCancel(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1")
	a := c.responder("inst-a", manufacturer, "dev1").Start(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	obs, err := c.client.Observe(ctx, "dev1", northbound.Req{Kind: northbound.KindObserveComposite, Paths: []string{"/3/0/0"}})
	if err != nil {
		t.Fatal(err)
	}
	a.WaitObservations(t, 1)
	cancel()
	for range obs.C() {
	}
	<-obs.Done()
	a.WaitObservations(t, 0)
	if !errors.Is(obs.Err(), context.Canceled) {
		t.Fatalf("Err = %v", obs.Err())
	}
}

func TestObserveEnds(t *testing.T) {
	c := newCluster(t, testOpts)
	c.member("inst-a", "dev1")
	a := c.responder("inst-a", func(r *northbound.Request) (*northbound.Resp, error) {
		if r.Req.Path == "/9/0" {
			return &northbound.Resp{Code: "NOT_FOUND"}, nil
		}
		return manufacturer(r)
	}, "dev1").Start(t)
	ctx := ctxT(t)

	// A first answer with an error code: no observation.
	_, err := c.client.Observe(ctx, "dev1", northbound.Req{Path: "/9/0"})
	var ce *nbclient.CodeError
	if !errors.As(err, &ce) || ce.Resp.Code != "NOT_FOUND" || err.Error() != "device answered NOT_FOUND" {
		t.Fatalf("Observe = %v", err)
	}
	if _, err := c.client.Observe(ctx, "dev1", readReq()); err == nil || !strings.Contains(err.Error(), "Observe needs") {
		t.Fatalf("Observe(read) = %v", err)
	}

	// An err for the ticket ends it.
	obs, err := c.client.Observe(ctx, "dev1", northbound.Req{Path: "/3/0/0"})
	if err != nil {
		t.Fatal(err)
	}
	a.WaitObservations(t, 1)
	if err := northbound.PublishJSON(ctx, c.bus, northbound.ChannelResp, &northbound.Response{Ticket: obs.Ticket(),
		Err: &northbound.ErrorMsg{ErrorMessage: "endpoint de-registered"}}); err != nil {
		t.Fatal(err)
	}
	for range obs.C() {
	}
	var re *nbclient.RemoteError
	if !errors.As(obs.Err(), &re) || re.Message != "endpoint de-registered" {
		t.Fatalf("Err = %v", obs.Err())
	}
	// The fake server still holds it: Cancel ends it there.
	_ = a.Notify(ctx, obs.Ticket(), northbound.Resp{Code: "CONTENT"}) // ignored: nobody waits for the ticket
	if err := obs.Cancel(ctx); err != nil {
		t.Fatalf("Cancel = %v", err)
	}
	if err := obs.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if err := func() error {
		o2, err := c.client.Observe(ctx, "dev1", northbound.Req{Path: "/3/0/0"})
		if err != nil {
			return err
		}
		a.WaitObservations(t, 1)
		// End it on the server side first: Cancel then reports NOT_FOUND.
		if _, err := c.client.Do(ctx, "dev1", northbound.Req{Kind: northbound.KindCancelObserve, ObserveTicket: o2.Ticket()}); err != nil {
			return err
		}
		err = o2.Cancel(ctx)
		if !errors.As(err, &ce) || ce.Resp.Code != "NOT_FOUND" {
			return fmt.Errorf("Cancel = %v", err)
		}
		return nil
	}(); err != nil {
		t.Fatal(err)
	}
}

// TestRedis runs a request and an observation over a real Redis, with the
// owner looked up in the Redis store.
func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	ctx := ctxT(t)
	st, err := redisstore.Open(ctx, srv.URL, redisstore.Options{Prefix: "nbc:"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	bus := northbound.NewRedisBus(st.Client())
	if err := st.Announce(ctx, store.Member{ID: "inst-a", State: store.StateActive}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.SetOwner(ctx, "dev1", "inst-a"); err != nil {
		t.Fatal(err)
	}
	claims := nbtest.NewClaims()
	a := nbtest.New(bus, "inst-a", claims, "dev1")
	a.Handler = manufacturer
	a.Start(t)
	b := nbtest.New(bus, "inst-b", claims)
	b.AnswerUnowned = true
	b.Start(t)

	c := nbclient.New(bus, st, testOpts)
	defer c.Close()
	resp, err := c.Do(ctx, "dev1", readReq())
	if err != nil {
		t.Fatal(err)
	}
	checkManufacturer(t, resp)
	if got := channels(a.Received()); len(got) != 1 || got[0] != "LESHAN_REQ:inst-a" {
		t.Fatalf("owner received on %v", got)
	}
	_, err = c.Do(ctx, "dev9", readReq())
	var re *nbclient.RemoteError
	if !errors.As(err, &re) || re.Message != `endpoint "dev9" is not registered` {
		t.Fatalf("Do(dev9) = %v", err)
	}
	obs, err := c.Observe(ctx, "dev1", northbound.Req{Path: "/3/0/0"})
	if err != nil {
		t.Fatal(err)
	}
	a.WaitObservations(t, 1)
	if err := a.Notify(ctx, obs.Ticket(), northbound.Resp{Code: "CONTENT", Node: obs.First().Node}); err != nil {
		t.Fatal(err)
	}
	checkManufacturer(t, <-obs.C())
	if err := obs.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	a.WaitObservations(t, 0)
}

func TestIsSuccess(t *testing.T) {
	for code, want := range map[string]bool{"CONTENT": true, "CHANGED": true, "CREATED": true, "DELETED": true, "VALID": true,
		"CONTINUE": true, "NOT_FOUND": false, "BAD_REQUEST": false, "": false, "content": false, "INTERNAL_SERVER_ERROR": false} {
		if nbclient.IsSuccess(code) != want {
			t.Errorf("IsSuccess(%q) != %v", code, want)
		}
	}
	if a, b := nbclient.NewTicket(), nbclient.NewTicket(); len(a) != 32 || a == b || strings.Trim(a, "0123456789abcdef") != "" {
		t.Fatalf("tickets %s %s", a, b)
	}
}

// TestNotificationOvertakesFirstResp: a notification published before the
// observe's first resp (the device notified at once) is delivered after
// it, not taken for the first answer.
func TestNotificationOvertakesFirstResp(t *testing.T) {
	bus := northbound.NewBroker()
	defer bus.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reqs, err := bus.Subscribe(ctx, northbound.ChannelReq)
	if err != nil {
		t.Fatal(err)
	}
	defer reqs.Close()
	go func() {
		for m := range reqs.C() {
			r, err := northbound.ParseRequest(m.Payload)
			if err != nil || r.Req.Kind != northbound.KindObserve {
				continue
			}
			value := func(v string, observe bool) *northbound.Resp {
				return &northbound.Resp{Kind: "observe", Code: nbclient.CodeContent, Observe: observe,
					Node: &node.Any{Node: node.NewSingle(0, node.StringValue(v))}}
			}
			for _, resp := range []northbound.Response{
				{Ticket: r.Ticket, Ack: true},
				{Ticket: r.Ticket, Resp: value("second", true)},
				{Ticket: r.Ticket, Resp: value("first", false)},
				{Ticket: r.Ticket, Resp: value("third", true)},
			} {
				_ = northbound.PublishJSON(ctx, bus, northbound.ChannelResp, resp)
			}
		}
	}()
	c := nbclient.New(bus, nil, testOpts)
	defer c.Close()
	obs, err := c.Observe(ctx, "dev", northbound.Req{Kind: northbound.KindObserve, Path: "/3/0/0"})
	if err != nil {
		t.Fatal(err)
	}
	str := func(r *northbound.Resp) string {
		s, _ := r.Node.Node.(node.Resource).Value.AsString()
		return s
	}
	if got := str(obs.First()); got != "first" {
		t.Fatalf("first answer %q, want the observe's resp", got)
	}
	for _, want := range []string{"second", "third"} {
		select {
		case r := <-obs.C():
			if got := str(r); got != want {
				t.Fatalf("notification %q, want %q", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("no notification %q", want)
		}
	}
}
