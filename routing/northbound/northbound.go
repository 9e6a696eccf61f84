// Package northbound is the cluster's API towards IoT backends: Redis
// pub/sub channels carrying JSON, named and shaped as in the Leshan cluster
// design note.
//
// A Bus publishes and subscribes. Two implementations exist: RedisBus, on a
// Redis server shared with other instances and IoT backends, and Broker, an
// in-process bus for a single instance with in-memory state (the seed's
// demo broker, read by the web demo).
package northbound

import (
	"context"
	"encoding/json"
	"fmt"
)

// Channel names (a contract with IoT backends; do not change).
const (
	ChannelRegNew = "LESHAN_REG_NEW"
	ChannelRegUp  = "LESHAN_REG_UP"
	ChannelRegDel = "LESHAN_REG_DEL"
	ChannelReq    = "LESHAN_REQ"
	ChannelResp   = "LESHAN_RESP"
)

// InstanceReqChannel is the request channel of one instance, on which the
// Go client publishes requests for the devices that instance owns.
func InstanceReqChannel(instance string) string { return ChannelReq + ":" + instance }

// Message is one message received from a subscription.
type Message struct {
	Channel string
	Payload []byte
}

// Subscription delivers messages until Close.
type Subscription interface {
	// C returns the channel of received messages; it is closed after Close
	// or when the bus goes away.
	C() <-chan Message
	Close() error
}

// Publisher publishes a payload on a channel.
type Publisher interface {
	Publish(ctx context.Context, channel string, payload []byte) error
}

// Bus publishes and subscribes.
type Bus interface {
	Publisher
	// Subscribe returns a subscription to the channels. When Subscribe
	// returns, the subscription is active: messages published afterwards
	// are delivered.
	Subscribe(ctx context.Context, channels ...string) (Subscription, error)
}

// PublishJSON marshals v and publishes it.
func PublishJSON(ctx context.Context, p Publisher, channel string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("northbound: encode %s payload: %w", channel, err)
	}
	if err := p.Publish(ctx, channel, b); err != nil {
		return fmt.Errorf("northbound: publish on %s: %w", channel, err)
	}
	return nil
}
