package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"

	"github.com/lwm2mcluster/lwm2m/backend/dgram"
	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// BenchmarkRegisterRedis measures Register requests per second on one
// instance whose state is in a real Redis (each op: one CoAP Register from
// one of 64 concurrent device sockets, the Lua add script, the ownership
// write and the LESHAN_REG_NEW publish).
//
//	go test -run '^$' -bench RegisterRedis -benchtime 5000x ./backend/server
func BenchmarkRegisterRedis(b *testing.B) {
	rds := redistest.Start(b)
	st, err := redisstore.Open(context.Background(), rds.URL, redisstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	srv, err := New(Config{InstanceID: "bench", Store: st, Events: northbound.NewRedisBus(st.Client()),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	l, err := dgram.Listen("127.0.0.1:0", dgram.Config{})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.ServeCoAP(ctx, l); close(done) }()
	defer func() { cancel(); <-done }()

	payload := []byte(`</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</6/0>`)
	var seq atomic.Int64
	b.SetParallelism(32) // 64 device sockets on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		cc, err := udp.Dial(l.Addr().String())
		if err != nil {
			b.Error(err)
			return
		}
		defer cc.Close()
		for pb.Next() {
			ep := fmt.Sprintf("ep=bench-%d", seq.Add(1))
			rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := cc.Post(rctx, "/rd", message.AppLinkFormat, bytes.NewReader(payload),
				message.Option{ID: message.URIQuery, Value: []byte(ep)}, message.Option{ID: message.URIQuery, Value: []byte("lt=300")})
			rcancel()
			if err != nil || resp.Code() != codes.Created {
				b.Errorf("register: %v %v", resp, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}
