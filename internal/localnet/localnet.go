// Package localnet has the small helpers the benchmark harnesses use to run
// servers on loopback: a free port, and waiting for an HTTP endpoint.
package localnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// FreePort returns a port that is free on 127.0.0.1 for network ("udp4" or
// "tcp4") at the time of the call.
func FreePort(network string) (uint16, error) {
	switch network {
	case "udp4":
		c, err := net.ListenUDP(network, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		defer c.Close()
		return uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
	case "tcp4":
		l, err := net.Listen(network, "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		defer l.Close()
		return uint16(l.Addr().(*net.TCPAddr).Port), nil
	}
	return 0, fmt.Errorf("finding a free port: unsupported network %q", network)
}

// WaitHTTP polls url every 100 ms until it answers 200, timeout passes,
// ctx ends or exited (when not nil) reports that the server process is
// gone.
func WaitHTTP(ctx context.Context, url string, timeout time.Duration, exited func() bool) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	last := errors.New("no answer")
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = errors.New(resp.Status)
		} else {
			last = err
		}
		switch {
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case exited != nil && exited():
			return fmt.Errorf("exited before %s answered 200", url)
		case time.Now().After(deadline):
			return fmt.Errorf("%s not 200 within %v: %w", url, timeout, last)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
