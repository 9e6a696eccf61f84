package northbound

import (
	"context"
	"errors"
	"sync"
)

// ErrClosed is returned by a closed Broker.
var ErrClosed = errors.New("northbound: broker closed")

// DefaultSubscriberBuffer is how many messages a slow Broker subscriber may
// fall behind before messages to it are dropped (and counted).
const DefaultSubscriberBuffer = 1024

// Broker is an in-process Bus. Publish never blocks on a slow subscriber:
// a subscriber whose buffer is full misses the message and its Dropped
// count grows, like a Redis client that falls behind its output buffer.
type Broker struct {
	mu     sync.Mutex
	subs   map[*brokerSub]struct{}
	closed bool
	buffer int
}

var _ Bus = (*Broker)(nil)

// NewBroker returns an empty broker.
func NewBroker() *Broker {
	return &Broker{subs: map[*brokerSub]struct{}{}, buffer: DefaultSubscriberBuffer}
}

type brokerSub struct {
	b        *Broker
	channels map[string]bool
	c        chan Message
	dropped  uint64
	once     sync.Once
}

func (s *brokerSub) C() <-chan Message { return s.c }

func (s *brokerSub) Close() error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.closeLocked()
	return nil
}

func (s *brokerSub) closeLocked() {
	s.once.Do(func() {
		delete(s.b.subs, s)
		close(s.c)
	})
}

// Publish implements Publisher.
func (b *Broker) Publish(_ context.Context, channel string, payload []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	for s := range b.subs {
		if !s.channels[channel] {
			continue
		}
		p := make([]byte, len(payload))
		copy(p, payload)
		select {
		case s.c <- Message{Channel: channel, Payload: p}:
		default:
			s.dropped++
		}
	}
	return nil
}

// Subscribe implements Bus.
func (b *Broker) Subscribe(_ context.Context, channels ...string) (Subscription, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	s := &brokerSub{b: b, channels: map[string]bool{}, c: make(chan Message, b.buffer)}
	for _, ch := range channels {
		s.channels[ch] = true
	}
	b.subs[s] = struct{}{}
	return s, nil
}

// Dropped returns how many messages were dropped for slow subscribers.
func (b *Broker) Dropped() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n uint64
	for s := range b.subs {
		n += s.dropped
	}
	return n
}

// Close closes every subscription; later calls fail with ErrClosed.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for s := range b.subs {
		s.closeLocked()
	}
	return nil
}
