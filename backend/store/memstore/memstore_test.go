package memstore_test

import (
	"sync"
	"testing"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
	"github.com/lwm2mcluster/lwm2m/backend/store/memstore"
	"github.com/lwm2mcluster/lwm2m/backend/store/storetest"
)

func TestConformance(t *testing.T) {
	var mu sync.Mutex
	shared := map[*testing.T]*memstore.Store{}
	storetest.Run(t, func(t *testing.T, grace time.Duration) store.Store {
		mu.Lock()
		defer mu.Unlock()
		if s, ok := shared[t]; ok {
			return s
		}
		s := memstore.New(grace)
		shared[t] = s
		return s
	})
}
