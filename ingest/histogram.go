package ingest

import (
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// batchHistogram is a Prometheus histogram that takes many equal
// observations in one call. The event delay is known per second of record
// time with a count of records, so it is observed once per second and
// count instead of once per event (prometheus.Histogram has no weighted
// Observe). It is exposed like any histogram: _bucket, _sum, _count.
type batchHistogram struct {
	desc   *prometheus.Desc
	upper  []float64 // bucket upper bounds, ascending; +Inf is implicit
	mu     sync.Mutex
	counts []uint64 // per bucket, not cumulative; the last one is +Inf
	count  uint64
	sum    float64
}

func newBatchHistogram(opts prometheus.HistogramOpts) *batchHistogram {
	return &batchHistogram{
		desc:   prometheus.NewDesc(opts.Name, opts.Help, nil, nil),
		upper:  opts.Buckets,
		counts: make([]uint64, len(opts.Buckets)+1),
	}
}

// ObserveN records n observations of v.
func (h *batchHistogram) ObserveN(v float64, n uint64) {
	i := sort.SearchFloat64s(h.upper, v) // first bucket with v <= upper bound
	h.mu.Lock()
	h.counts[i] += n
	h.count += n
	h.sum += v * float64(n)
	h.mu.Unlock()
}

func (h *batchHistogram) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *batchHistogram) Collect(ch chan<- prometheus.Metric) {
	h.mu.Lock()
	buckets := make(map[float64]uint64, len(h.upper))
	var cum uint64
	for i, u := range h.upper {
		cum += h.counts[i]
		buckets[u] = cum
	}
	count, sum := h.count, h.sum
	h.mu.Unlock()
	ch <- prometheus.MustNewConstHistogram(h.desc, count, sum, buckets)
}
