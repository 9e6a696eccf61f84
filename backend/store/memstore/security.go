package memstore

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/lwm2mcluster/lwm2m/backend/store"
)

func cloneSec(s store.SecurityInfo) store.SecurityInfo {
	s.Key = bytes.Clone(s.Key)
	return s
}

// PutSecurity implements store.Security.
func (s *Store) PutSecurity(_ context.Context, info store.SecurityInfo) error {
	if err := info.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ep, ok := s.secByID[info.Identity]; ok && ep != info.Endpoint {
		return store.ErrIdentityTaken
	}
	if old, ok := s.secByEP[info.Endpoint]; ok && s.secByID[old.Identity] == info.Endpoint {
		delete(s.secByID, old.Identity)
	}
	s.secByEP[info.Endpoint] = cloneSec(info)
	s.secByID[info.Identity] = info.Endpoint
	return nil
}

// SecurityByEndpoint implements store.Security.
func (s *Store) SecurityByEndpoint(_ context.Context, ep string) (store.SecurityInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	info, ok := s.secByEP[ep]
	if !ok {
		return store.SecurityInfo{}, store.ErrNotFound
	}
	return cloneSec(info), nil
}

// SecurityByIdentity implements store.Security.
func (s *Store) SecurityByIdentity(_ context.Context, identity string) (store.SecurityInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep, ok := s.secByID[identity]
	if !ok {
		return store.SecurityInfo{}, store.ErrNotFound
	}
	return cloneSec(s.secByEP[ep]), nil
}

// RemoveSecurity implements store.Security.
func (s *Store) RemoveSecurity(_ context.Context, ep string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	info, ok := s.secByEP[ep]
	if !ok {
		return store.ErrNotFound
	}
	delete(s.secByEP, ep)
	if s.secByID[info.Identity] == ep {
		delete(s.secByID, info.Identity)
	}
	return nil
}

// ListSecurity implements store.Security.
func (s *Store) ListSecurity(_ context.Context) ([]store.SecurityInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]store.SecurityInfo, 0, len(s.secByEP))
	for _, info := range s.secByEP {
		out = append(out, cloneSec(info))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Endpoint < out[j].Endpoint })
	return out, nil
}

// AllocateNodeID implements store.NodeIDs.
func (s *Store) AllocateNodeID(_ context.Context, instance string) (uint16, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.nodeByInst[instance]; ok {
		if holder, held := s.instByNode[id]; !held || holder == instance {
			s.instByNode[id] = instance
			return id, nil
		}
	}
	for i := 1; i <= 0xffff; i++ {
		id := uint16(i)
		if _, held := s.instByNode[id]; !held {
			s.instByNode[id] = instance
			s.nodeByInst[instance] = id
			return id, nil
		}
	}
	return 0, store.ErrNoNodeID
}

// ClaimNodeID implements store.NodeIDs.
func (s *Store) ClaimNodeID(_ context.Context, instance string, id uint16) error {
	if id == 0 {
		return fmt.Errorf("node id 0 is invalid: want 1..65535")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if holder, held := s.instByNode[id]; held && holder != instance {
		return fmt.Errorf("%w: node id %d is held by instance %q", store.ErrNodeIDTaken, id, holder)
	}
	if cur, ok := s.nodeByInst[instance]; ok && cur != id && s.instByNode[cur] == instance {
		delete(s.instByNode, cur)
	}
	s.instByNode[id] = instance
	s.nodeByInst[instance] = id
	return nil
}

// dtlsSweepEvery is the least number of puts between sweeps of expired
// sessions; a sweep waits for half as many puts as there are sessions, so
// its cost is constant per put.
const dtlsSweepEvery = 1024

// PutDTLSSession implements store.DTLSSessions.
func (s *Store) PutDTLSSession(_ context.Context, id, data []byte, ttl time.Duration) error {
	if err := store.CheckDTLSSession(id, ttl); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.dtlsPuts++
	if s.dtlsPuts >= max(dtlsSweepEvery, len(s.dtls)/2) {
		for k, e := range s.dtls {
			if !now.Before(e.expires) {
				delete(s.dtls, k)
			}
		}
		s.dtlsPuts = 0
	}
	s.dtls[string(id)] = dtlsEntry{data: bytes.Clone(data), expires: now.Add(ttl)}
	return nil
}

// GetDTLSSession implements store.DTLSSessions.
func (s *Store) GetDTLSSession(_ context.Context, id []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.dtls[string(id)]
	if !ok {
		return nil, store.ErrNotFound
	}
	if !time.Now().Before(e.expires) {
		delete(s.dtls, string(id))
		return nil, store.ErrNotFound
	}
	return bytes.Clone(e.data), nil
}

// DeleteDTLSSession implements store.DTLSSessions.
func (s *Store) DeleteDTLSSession(_ context.Context, id []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.dtls, string(id))
	return nil
}
