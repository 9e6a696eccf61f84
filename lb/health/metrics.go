package health

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the checker's Prometheus collectors. A nil *metrics (no
// Registerer) records nothing.
type metrics struct {
	checks      *prometheus.CounterVec // by result
	byResult    map[string]prometheus.Counter
	up          *prometheus.GaugeVec   // by backend
	transitions *prometheus.CounterVec // by to
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lwm2m_lb_health_checks_total",
			Help: "Health check outcomes: probes answered (ok), timed out (timeout) or not sent (send_error), and datagrams ignored because they are not the answer to a probe in flight (bad_reply).",
		}, []string{"result"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lwm2m_lb_backend_up",
			Help: "Whether the backend passes its health checks (1) or not (0, also while its health is unknown).",
		}, []string{"backend"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lwm2m_lb_backend_transitions_total",
			Help: "Backend health transitions, by new state (up or down), including the first from unknown.",
		}, []string{"to"}),
	}
	m.byResult = map[string]prometheus.Counter{}
	for _, r := range []string{resultOK, resultTimeout, resultBadReply, resultSendError} {
		m.byResult[r] = m.checks.WithLabelValues(r)
	}
	m.transitions.WithLabelValues("up")
	m.transitions.WithLabelValues("down")
	var registered []prometheus.Collector
	for _, col := range []prometheus.Collector{m.checks, m.up, m.transitions} {
		if err := reg.Register(col); err != nil {
			for _, r := range registered {
				reg.Unregister(r)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("%w: metrics already registered (one checker per registry): %w", ErrConfig, err)
			}
			return nil, fmt.Errorf("health: register metrics: %w", err)
		}
		registered = append(registered, col)
	}
	return m, nil
}

func (m *metrics) check(result string) {
	if m != nil {
		m.byResult[result].Inc()
	}
}

func (m *metrics) setUp(backend string, up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.up.WithLabelValues(backend).Set(v)
}

func (m *metrics) deleteUp(backend string) {
	if m != nil {
		m.up.DeleteLabelValues(backend)
	}
}

func (m *metrics) transition(up bool) {
	if m == nil {
		return
	}
	to := "down"
	if up {
		to = "up"
	}
	m.transitions.WithLabelValues(to).Inc()
}
