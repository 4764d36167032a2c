package ingest

import (
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestBatchHistogram checks that ObserveN(v, n) exposes what n calls of
// prometheus.Histogram.Observe(v) expose: the same buckets (values on a
// bound fall into it: "le"), count and sum.
func TestBatchHistogram(t *testing.T) {
	opts := prometheus.HistogramOpts{Name: "h", Help: "h", Buckets: []float64{.1, .5, 1, 5}}
	want := prometheus.NewHistogram(opts)
	got := newBatchHistogram(opts)
	for _, o := range []struct {
		v float64
		n uint64
	}{{-3, 1}, {0, 2}, {.1, 3}, {.1000001, 4}, {.5, 1}, {.7, 1000}, {1, 5}, {4.99, 6}, {5, 7}, {5.01, 8}, {1e9, 9}, {.3, 0}} {
		got.ObserveN(o.v, o.n)
		for range o.n {
			want.Observe(o.v)
		}
	}
	w, g := collect(t, want), collect(t, got)
	if w.GetSampleCount() != g.GetSampleCount() {
		t.Errorf("count = %d, want %d", g.GetSampleCount(), w.GetSampleCount())
	}
	if math.Abs(w.GetSampleSum()-g.GetSampleSum()) > 1e-6*math.Abs(w.GetSampleSum()) {
		t.Errorf("sum = %v, want %v", g.GetSampleSum(), w.GetSampleSum())
	}
	if len(w.Bucket) != len(g.Bucket) {
		t.Fatalf("%d buckets, want %d", len(g.Bucket), len(w.Bucket))
	}
	for i := range w.Bucket {
		if w.Bucket[i].GetUpperBound() != g.Bucket[i].GetUpperBound() || w.Bucket[i].GetCumulativeCount() != g.Bucket[i].GetCumulativeCount() {
			t.Errorf("bucket %d = le %v: %d, want le %v: %d", i, g.Bucket[i].GetUpperBound(), g.Bucket[i].GetCumulativeCount(),
				w.Bucket[i].GetUpperBound(), w.Bucket[i].GetCumulativeCount())
		}
	}
}

func collect(t *testing.T, c prometheus.Collector) *dto.Histogram {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram()
}
