package northbound_test

import (
	"context"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/internal/redistest"
	"github.com/lwm2mcluster/lwm2m/routing/northbound"
)

func testBus(t *testing.T, pub, sub northbound.Bus) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := sub.Subscribe(ctx, northbound.ChannelRegNew, northbound.ChannelRegDel)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	type ev struct{ A int }
	if err := northbound.PublishJSON(ctx, pub, northbound.ChannelRegUp, ev{1}); err != nil {
		t.Fatal(err)
	}
	if err := northbound.PublishJSON(ctx, pub, northbound.ChannelRegNew, ev{2}); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, northbound.ChannelRegDel, []byte("x")); err != nil {
		t.Fatal(err)
	}
	want := []northbound.Message{{Channel: "LESHAN_REG_NEW", Payload: []byte(`{"A":2}`)}, {Channel: "LESHAN_REG_DEL", Payload: []byte("x")}}
	for _, w := range want {
		select {
		case m := <-s.C():
			if m.Channel != w.Channel || string(m.Payload) != string(w.Payload) {
				t.Fatalf("got %s %s, want %s %s", m.Channel, m.Payload, w.Channel, w.Payload)
			}
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", w.Channel)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-s.C():
		if ok {
			t.Fatal("message after Close")
		}
	case <-ctx.Done():
		t.Fatal("C not closed after Close")
	}
}

func TestBroker(t *testing.T) {
	b := northbound.NewBroker()
	testBus(t, b, b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), "x", nil); err == nil {
		t.Fatal("Publish after Close succeeded")
	}
}

func TestBrokerSlowSubscriber(t *testing.T) {
	b := northbound.NewBroker()
	s, _ := b.Subscribe(context.Background(), "c")
	defer s.Close()
	for range northbound.DefaultSubscriberBuffer + 10 {
		if err := b.Publish(context.Background(), "c", []byte("m")); err != nil {
			t.Fatal(err)
		}
	}
	if d := b.Dropped(); d != 10 {
		t.Fatalf("Dropped = %d, want 10", d)
	}
}

func TestRedisBus(t *testing.T) {
	srv := redistest.Start(t)
	testBus(t, northbound.NewRedisBus(srv.Client(t)), northbound.NewRedisBus(srv.Client(t)))
}
