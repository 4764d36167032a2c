package e2e

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// samples is one scrape of a Prometheus text endpoint: series (name plus
// its label set as printed, e.g. `x_bucket{le="0.5"}`) to value.
type samples map[string]float64

var scrapeClient = &http.Client{Timeout: 5 * time.Second}

// scrape reads http://addr/metrics.
func scrape(addr string) (samples, error) {
	resp, err := scrapeClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseSamples(resp.Body)
}

// parseSamples reads the sample lines of the Prometheus text format (no
// exemplars, no timestamps: what client_golang writes).
func parseSamples(r io.Reader) (samples, error) {
	out := samples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// sum adds every series of metric name (all label sets).
func (s samples) sum(name string) float64 {
	var t float64
	for k, v := range s {
		if k == name || strings.HasPrefix(k, name+"{") {
			t += v
		}
	}
	return t
}

// bucket is one cumulative histogram bucket.
type bucket struct {
	le    float64
	count float64
}

// histogram returns the cumulative buckets of histogram name (one without
// labels other than le), sorted by le, +Inf last.
func (s samples) histogram(name string) []bucket {
	var out []bucket
	prefix := name + `_bucket{le="`
	for k, v := range s {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(rest, `"}`), 64)
		if err != nil {
			continue
		}
		out = append(out, bucket{le, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].le < out[j].le })
	return out
}

// minus returns the buckets of h less those of base (a histogram over an
// interval, from two scrapes of the same process).
func minus(h, base []bucket) []bucket {
	out := append([]bucket(nil), h...)
	for i := range out {
		for _, b := range base {
			if b.le == out[i].le {
				out[i].count -= b.count
			}
		}
	}
	return out
}

// quantile estimates the q-quantile from cumulative buckets as Prometheus's
// histogram_quantile does: linear interpolation inside the bucket holding
// the rank (from 0 for the first bucket). It returns NaN for no
// observations, and the highest finite bound when the rank is in +Inf.
func quantile(q float64, h []bucket) float64 {
	if len(h) == 0 {
		return math.NaN()
	}
	total := h[len(h)-1].count
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	lo, below := 0.0, 0.0
	for _, b := range h {
		if b.count >= rank {
			if math.IsInf(b.le, 1) {
				return lo
			}
			if b.count == below {
				return b.le
			}
			return lo + (b.le-lo)*(rank-below)/(b.count-below)
		}
		lo, below = b.le, b.count
	}
	return lo
}

// shareAtMost is the exact fraction of observations in buckets with upper
// bound ≤ le (le must be a bucket bound for this to be exact).
func shareAtMost(le float64, h []bucket) float64 {
	if len(h) == 0 || h[len(h)-1].count <= 0 {
		return math.NaN()
	}
	var n float64
	for _, b := range h {
		if b.le <= le {
			n = b.count
		}
	}
	return n / h[len(h)-1].count
}
