package instance

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store/redisstore"
	"github.com/lwm2mcluster/lwm2m/bench/simdevice"
	"github.com/lwm2mcluster/lwm2m/internal/redistest"
	"github.com/lwm2mcluster/lwm2m/routing/nbclient"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

// BenchmarkNorthboundRead measures northbound reads per second through
// Redis on one instance: an IoT backend's Go client publishes a read of
// /3/0/0 (text) for one of 100 simulated devices on LESHAN_REQ:<instance>,
// the instance claims the ticket, acks, reads the device over CoAP and
// publishes the resp; 64 reads are in flight at a time. Everything (Redis,
// the instance, the devices, the client) shares the machine's cores.
//
//	go test -run '^$' -bench NorthboundRead -benchtime 20000x ./backend/instance
func BenchmarkNorthboundRead(b *testing.B) {
	rds := redistest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in, err := Start(ctx, Options{CoAPAddr: "127.0.0.1:0", InstanceID: "bench", RedisURL: rds.URL, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer in.Stop(context.Background())
	const devices = 100
	for i := range devices {
		d := simdevice.New(simdevice.Config{Endpoint: fmt.Sprintf("bench-%d", i), Server: in.CoAPAddr().String(), Logger: quiet})
		if err := d.Start(ctx); err != nil {
			b.Fatal(err)
		}
		defer d.Close()
		if _, err := d.Register(ctx); err != nil {
			b.Fatal(err)
		}
	}
	rs, err := redisstore.Open(ctx, rds.URL, redisstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer rs.Close()
	c := nbclient.New(northbound.NewRedisBus(rs.Client()), rs, nbclient.Options{})
	defer c.Close()
	if err := c.Start(ctx); err != nil {
		b.Fatal(err)
	}
	text := uint16(0)
	var n, failed atomic.Int64
	b.SetParallelism(32) // 64 clients on 2 cores
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			resp, err := c.Do(ctx, fmt.Sprintf("bench-%d", i%devices),
				northbound.Req{Kind: northbound.KindRead, Path: "/3/0/0", ContentFormat: &text})
			if err != nil || resp.Code != nbclient.CodeContent {
				failed.Add(1)
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "reads/s")
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d reads failed", f, b.N)
	}
}
