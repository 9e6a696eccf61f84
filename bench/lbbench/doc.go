// Package lbbench measures the UDP throughput of the balancer (lwm2m-lb)
// against direct echo and against nginx's stream UDP proxy, on loopback and
// in the same run, so that the figures are comparable on a shared machine.
//
// The pieces are usable on their own:
//
//   - [Echo] is a batched UDP echo backend (one SO_REUSEPORT socket per
//     worker, recvmmsg/sendmmsg through lb/udpio, with UDP GSO/GRO where
//     the kernel has them, in every scenario), optionally speaking PROXY
//     protocol v2 the way backends behind lwm2m-lb in proxy mode do, and
//     answering CoAP pings so that health checks work against it.
//   - [Load] is a load generator: many client sockets, each with its own
//     source port and a fixed window of outstanding datagrams, driven by a
//     few goroutines over epoll with recvmmsg/sendmmsg. It counts responses
//     per second, loss and round-trip times.
//   - [NginxConfig] and [StartNginx] run Debian's nginx with the stream
//     module as a UDP proxy in front of echo backends.
//   - [Run] runs one [Scenario] (direct, nginx, lb-nat or lb-proxy) and
//     [Bench] runs several one after the other and returns a [Report] that
//     prints as a table or as JSON.
//
// Everything listens on 127.0.0.1 only. The package uses Linux system calls
// (epoll, recvmmsg, sendmmsg, SO_REUSEPORT) and only builds on Linux.
package lbbench
