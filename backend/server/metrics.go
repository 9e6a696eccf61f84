package server

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus collectors.
type metrics struct {
	registrations  *prometheus.CounterVec // by op
	responses      *prometheus.CounterVec // by CoAP code
	publishErrors  prometheus.Counter
	refused        *prometheus.CounterVec // by reason
	storeErrors    prometheus.Counter
	sweepDuration  prometheus.Histogram
	handleDuration *prometheus.HistogramVec
	observations   *prometheus.CounterVec // by event
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lwm2m_registrations_total",
			Help: "Registration lifecycle events handled by this instance, by op (register, update, deregister, replace, expire).",
		}, []string{"op"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lwm2m_coap_responses_total",
			Help: "CoAP responses to device requests, by response code.",
		}, []string{"code"}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lwm2m_northbound_publish_errors_total",
			Help: "Northbound events that could not be published.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lwm2m_registrations_refused_total",
			Help: "Registration interface requests refused for security reasons (4.03), by reason.",
		}, []string{"reason"}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lwm2m_store_errors_total",
			Help: "Shared-store operations that failed.",
		}),
		sweepDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "lwm2m_expiry_sweep_seconds",
			Help:    "Duration of registration expiry sweeps.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}),
		handleDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lwm2m_request_duration_seconds",
			Help:    "Time to handle a device request, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}, []string{"op"}),
		observations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lwm2m_observations_total",
			Help: "Observation events on this instance, by event (start, notify, cancel, replaced, unknown-token, ended-by-device, deregistered; for notifications sent block-wise and not published: blockwise-invalid, blockwise-too-large, blockwise-failed, blockwise-superseded).",
		}, []string{"event"}),
	}
	if reg != nil {
		reg.MustRegister(m.observations, m.registrations, m.responses, m.refused, m.publishErrors, m.storeErrors, m.sweepDuration, m.handleDuration)
	}
	return m
}
