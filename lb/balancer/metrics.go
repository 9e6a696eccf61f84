package balancer

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons (label values of lwm2m_lb_dropped_total).
const (
	dropNoBackend = iota // no healthy backend
	dropForged           // a PROXY header from a non-backend
	dropBadReply         // a backend reply without a valid PROXY header / unknown service address
	dropStray            // a datagram from a backend in NAT mode
	dropFlowLimit        // NAT mode: max flows reached
	dropUpstream         // NAT mode: upstream socket could not be opened
	dropTooBig           // NAT mode: reply larger than the relay buffer
	dropInternal
	numDrops
)

var dropNames = [numDrops]string{"no_backend", "forged_proxy_header", "bad_backend_reply", "stray_backend_datagram", "flow_limit", "upstream_socket", "too_big", "internal"}

// counters are one worker's (or the NAT relays') counters, each on its own
// cache lines so that workers never share a written line.
type counters struct {
	rx, tx, replies, batches atomic.Uint64
	readErrors, writeErrors  atomic.Uint64
	natOpened                atomic.Uint64
	cidRouted, cidUnknown    atomic.Uint64
	coalesced                atomic.Uint64
	dropped                  [numDrops]atomic.Uint64
	_                        [64]byte
}

type metrics struct {
	mu            sync.Mutex
	all           []*counters
	relayCounters *counters
	b             *Balancer

	tableBuilds prometheus.Counter
	natExpired  prometheus.Counter

	rx, tx, replies, batches, readErrors, writeErrors, natOpened, dropped, flows, natFlows *prometheus.Desc
	cidRouted, cidUnknown, coalesced                                                       *prometheus.Desc
}

func newMetrics(reg prometheus.Registerer, service string, b *Balancer) *metrics {
	labels := prometheus.Labels{"service": service}
	desc := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, extra, labels)
	}
	m := &metrics{
		b:             b,
		relayCounters: &counters{},
		tableBuilds: prometheus.NewCounter(prometheus.CounterOpts{Name: "lwm2m_lb_table_builds_total",
			Help: "Maglev table rebuilds (backend set or health changes).", ConstLabels: labels}),
		natExpired: prometheus.NewCounter(prometheus.CounterOpts{Name: "lwm2m_lb_nat_flows_expired_total",
			Help: "NAT-mode flows closed after their idle timeout.", ConstLabels: labels}),
		rx:          desc("lwm2m_lb_received_total", "Datagrams received (from clients and backends)."),
		tx:          desc("lwm2m_lb_sent_total", "Datagrams sent (to backends and clients)."),
		replies:     desc("lwm2m_lb_replies_total", "Backend replies relayed to clients."),
		batches:     desc("lwm2m_lb_read_batches_total", "recvmmsg calls that returned datagrams (received/batches = mean batch)."),
		readErrors:  desc("lwm2m_lb_read_errors_total", "Socket read errors."),
		writeErrors: desc("lwm2m_lb_write_errors_total", "Datagrams that could not be sent."),
		natOpened:   desc("lwm2m_lb_nat_flows_opened_total", "NAT-mode upstream sockets opened."),
		dropped:     desc("lwm2m_lb_dropped_total", "Datagrams dropped, by reason.", "reason"),
		flows:       desc("lwm2m_lb_flows", "Flows in the sticky flow table."),
		natFlows:    desc("lwm2m_lb_nat_flows", "Open NAT-mode upstream sockets."),
		cidRouted:   desc("lwm2m_lb_cid_routed_total", "DTLS records routed by Connection ID to their node."),
		cidUnknown:  desc("lwm2m_lb_cid_unknown_total", "DTLS records whose Connection ID names no usable node (placed by the flow table instead)."),
		coalesced:   desc("lwm2m_lb_coalesced_reads_total", "Reads that carried several datagrams of one sender (UDP receive offload)."),
	}
	m.all = append(m.all, m.relayCounters)
	if reg != nil {
		reg.MustRegister(m.tableBuilds, m.natExpired, m)
	}
	return m
}

func (m *metrics) newCounters() *counters {
	c := &counters{}
	m.mu.Lock()
	m.all = append(m.all, c)
	m.mu.Unlock()
	return c
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.rx, m.tx, m.replies, m.batches, m.readErrors, m.writeErrors, m.natOpened, m.dropped, m.flows, m.natFlows, m.cidRouted, m.cidUnknown, m.coalesced} {
		ch <- d
	}
}

// Totals are the summed counters.
type Totals struct {
	Received, Sent, Replies, Batches, ReadErrors, WriteErrors, NATOpened uint64
	CIDRouted, CIDUnknown, Coalesced                                     uint64
	Dropped                                                              map[string]uint64
}

// Totals sums the counters of every worker.
func (b *Balancer) Totals() Totals {
	m := b.m
	m.mu.Lock()
	defer m.mu.Unlock()
	t := Totals{Dropped: map[string]uint64{}}
	for _, c := range m.all {
		t.Received += c.rx.Load()
		t.Sent += c.tx.Load()
		t.Replies += c.replies.Load()
		t.Batches += c.batches.Load()
		t.ReadErrors += c.readErrors.Load()
		t.WriteErrors += c.writeErrors.Load()
		t.NATOpened += c.natOpened.Load()
		t.CIDRouted += c.cidRouted.Load()
		t.CIDUnknown += c.cidUnknown.Load()
		t.Coalesced += c.coalesced.Load()
		for i := range c.dropped {
			t.Dropped[dropNames[i]] += c.dropped[i].Load()
		}
	}
	return t
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	t := m.b.Totals()
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	counter(m.rx, t.Received)
	counter(m.tx, t.Sent)
	counter(m.replies, t.Replies)
	counter(m.batches, t.Batches)
	counter(m.readErrors, t.ReadErrors)
	counter(m.writeErrors, t.WriteErrors)
	counter(m.natOpened, t.NATOpened)
	counter(m.cidRouted, t.CIDRouted)
	counter(m.cidUnknown, t.CIDUnknown)
	counter(m.coalesced, t.Coalesced)
	for i, name := range dropNames {
		counter(m.dropped, t.Dropped[name], dropNames[i])
	}
	ch <- prometheus.MustNewConstMetric(m.flows, prometheus.GaugeValue, float64(m.b.flows.Len()))
	var nat int64
	if m.b.nat != nil {
		nat = m.b.nat.open()
	}
	ch <- prometheus.MustNewConstMetric(m.natFlows, prometheus.GaugeValue, float64(nat))
}
