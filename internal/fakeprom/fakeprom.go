// Package fakeprom plays Prometheus' HTTP API for unit tests (a Server,
// answering each query with the Sample values registered for it):
// /api/v1/series answers with the fixed series of the metric name a
// selector names, /api/v1/query with the vector
// registered for the exact query text (an empty vector otherwise), and
// either can be made to fail or to answer late. It records every query it
// receives, so tests assert on the PromQL a request produced.
package fakeprom

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Sample is one element of an instant vector.
type Sample struct {
	Labels map[string]string
	Value  string
	TS     float64
}

// Server is a fake Prometheus. Set its fields before requests are made;
// once requests may be in flight, use SetFail and SetDelay.
type Server struct {
	// URL is the server's base URL.
	URL string
	// Series answers /api/v1/series.
	Series []map[string]string
	// Vecs answers /api/v1/query by query text.
	Vecs map[string][]Sample
	// Fail, when it returns true, has written the whole answer itself.
	Fail func(w http.ResponseWriter) bool
	// Delay holds every answer back this long (or until the client leaves).
	Delay time.Duration

	t       testing.TB
	mu      sync.Mutex
	queries []string
}

// NewInMemory returns a fake Prometheus that listens nowhere: reach it
// through Transport. A synctest bubble can run it, where time only moves
// when every goroutine waits, which a goroutine in network I/O never does.
func NewInMemory(t testing.TB, series []map[string]string) *Server {
	return &Server{URL: "http://prometheus.test", Series: series, Vecs: map[string][]Sample{}, t: t}
}

// Transport serves requests with the fake directly, in the caller's
// goroutine.
func (s *Server) Transport() http.RoundTripper { return inMemory{s} }

type inMemory struct{ s *Server }

func (m inMemory) RoundTrip(req *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	m.s.ServeHTTP(rec, req.Clone(req.Context()))
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.t.Errorf("fake Prometheus: %v", err)
	}
	s.mu.Lock()
	delay := s.Delay
	if r.URL.Path == "/api/v1/query" {
		s.queries = append(s.queries, r.Form.Get("query"))
	}
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Fail != nil && s.Fail(w) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/api/v1/series":
		s.write(w, map[string]any{"status": "success", "data": s.seriesFor(r.Form["match[]"])})
	case "/api/v1/query":
		vec := s.Vecs[r.Form.Get("query")]
		result := make([]map[string]any, 0, len(vec))
		for _, v := range vec {
			result = append(result, map[string]any{"metric": v.Labels, "value": []any{v.TS, v.Value}})
		}
		s.write(w, map[string]any{"status": "success", "data": map[string]any{"resultType": "vector", "result": result}})
	default:
		http.NotFound(w, r)
	}
}

// seriesFor returns the series whose name the selectors name, or all of
// them for selectors without a name. Label matchers are not evaluated.
func (s *Server) seriesFor(matches []string) []map[string]string {
	out := []map[string]string{}
	for _, ls := range s.Series {
		for _, m := range matches {
			name, _, _ := strings.Cut(m, "{")
			if name = strings.TrimSpace(name); name == "" || name == ls["__name__"] {
				out = append(out, ls)
				break
			}
		}
	}
	return out
}

// SetFail sets Fail while requests may be in flight.
func (s *Server) SetFail(fn func(w http.ResponseWriter) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Fail = fn
}

// SetDelay sets Delay while requests may be in flight.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Delay = d
}

// Received returns the text of every query received, in order, counted
// when it arrives (before any Delay).
func (s *Server) Received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.queries)
}

func (s *Server) write(w http.ResponseWriter, v any) {
	if err := json.NewEncoder(w).Encode(v); err != nil {
		s.t.Errorf("fake Prometheus: %v", err)
	}
}
