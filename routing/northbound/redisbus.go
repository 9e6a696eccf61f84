package northbound

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
)

// RedisBus is a Bus on Redis pub/sub.
type RedisBus struct {
	c redis.UniversalClient
}

var _ Bus = (*RedisBus)(nil)

// NewRedisBus returns a bus on the client.
func NewRedisBus(c redis.UniversalClient) *RedisBus { return &RedisBus{c: c} }

// Publish implements Publisher.
func (b *RedisBus) Publish(ctx context.Context, channel string, payload []byte) error {
	return b.c.Publish(ctx, channel, payload).Err()
}

// Subscribe implements Bus. It waits for Redis to confirm the
// subscription, so nothing published after it returns is missed.
func (b *RedisBus) Subscribe(ctx context.Context, channels ...string) (Subscription, error) {
	ps := b.c.Subscribe(ctx)
	if err := ps.Subscribe(ctx, channels...); err != nil {
		_ = ps.Close()
		return nil, fmt.Errorf("northbound: subscribe: %w", err)
	}
	s := &redisSub{ps: ps, c: make(chan Message, DefaultSubscriberBuffer), done: make(chan struct{})}
	for confirmed := 0; confirmed < len(channels); {
		v, err := ps.Receive(ctx)
		if err != nil {
			_ = ps.Close()
			return nil, fmt.Errorf("northbound: subscribe confirmation: %w", err)
		}
		switch m := v.(type) {
		case *redis.Subscription:
			confirmed++
		case *redis.Message: // published between two confirmations
			s.c <- Message{Channel: m.Channel, Payload: []byte(m.Payload)}
		}
	}
	go s.run()
	return s, nil
}

type redisSub struct {
	ps   *redis.PubSub
	c    chan Message
	done chan struct{}
	once sync.Once
}

func (s *redisSub) run() {
	defer close(s.c)
	// go-redis reconnects and resubscribes on its own; Channel ends when
	// the PubSub is closed.
	for m := range s.ps.Channel(redis.WithChannelSize(DefaultSubscriberBuffer)) {
		select {
		case s.c <- Message{Channel: m.Channel, Payload: []byte(m.Payload)}:
		case <-s.done:
			return
		}
	}
}

func (s *redisSub) C() <-chan Message { return s.c }

func (s *redisSub) Close() error {
	var err error
	s.once.Do(func() {
		close(s.done)
		err = s.ps.Close()
	})
	return err
}
