package benchmarks

import (
	"bufio"
	"flag"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/ingest/dedup"
)

var (
	diskIDs    = flag.Int("dedupdisk.ids", 100_000_000, "BenchmarkDedupDisk: event IDs fed through one partition's filter, all inside one 24h window")
	diskMemory = flag.Int64("dedupdisk.memory", 256<<20, "BenchmarkDedupDisk: the RAM cap, the filter's whole memory (dedup.DiskConfig.Memory: Pebble's shares, the rest for the table)")
	diskRate   = flag.Float64("dedupdisk.rate", 12_500, "BenchmarkDedupDisk: the offered rate (IDs/s) of the paced phase after the load: one instance's share of 100k events/s over 8")
	diskPaced  = flag.Duration("dedupdisk.paced", 30*time.Second, "BenchmarkDedupDisk: how long the paced phase lasts (0: none)")
	diskTrace  = flag.Duration("dedupdisk.trace", 0, "BenchmarkDedupDisk: print where the memory is (RSS, Go heap, table, Pebble) this often (0: never)")
	diskDir    = flag.String("dedupdisk.dir", "", "BenchmarkDedupDisk: where the on-disk store lives (default: a temporary directory)")
)

// nonHeapBytes is what the benchmark's process maps besides the Go heap
// and the filter's table: the binary's text and data, the runtime's
// off-heap structures (measured: ~16 MiB of RSS before the filter starts).
const nonHeapBytes = 16 << 20

// BenchmarkDedupDisk is issue 11's sustained run: -dedupdisk.ids IDs (1% of
// them copies of earlier IDs, which must all be found) through one filter
// whose 24h window holds them all, under a RAM cap for the whole process,
// so that all but the newest hours live in the on-disk store and every
// lookup of a new ID reads it.
//
// The cap is budgeted as usagepipe budgets --dedup-memory-mib: the store
// takes its shares (dedup.DiskConfig.Memory), the table gets the rest
// (dedup.LimitFor(disk.TableBytes())), and the Go heap's soft limit
// (GOMEMLIMIT) is the cap less the table's peak and the process's non-heap
// memory (in the shipped CGO_ENABLED=0 build Pebble's cache lives on the Go
// heap). Build the test binary with CGO_ENABLED=0 like the shipped one:
// with cgo, Pebble's cache and memtables come from C malloc, whose
// per-thread arenas keep freed memory (50 MiB more RSS at 20M IDs).
//
// The load phase feeds the IDs as fast as the filter takes them and
// reports lookups per second, the p50/p99 of one lookup (every 256th is
// timed), disk bytes per ID and the process's peak RSS. Then a paced phase
// (-dedupdisk.paced at -dedupdisk.rate) continues the stream at a fixed
// offered rate, with the filter holding every earlier ID, and reports the
// p50/p99 event delay: from each ID's scheduled arrival to its decision,
// so a stall (a slow read, a spill) delays the IDs queued behind it. Run
// it alone:
//
//	CGO_ENABLED=0 go test ./benchmarks -run '^$' -bench '^BenchmarkDedupDisk$' -benchtime 1x -v
func BenchmarkDedupDisk(b *testing.B) {
	n := *diskIDs
	dir := *diskDir
	if dir == "" {
		dir = b.TempDir()
	}
	disk, err := dedup.OpenDisk(dedup.DiskConfig{Dir: dir + "/dedup", Memory: *diskMemory})
	if err != nil {
		b.Fatal(err)
	}
	defer disk.Close()
	limit := dedup.LimitFor(disk.TableBytes())
	tablePeak := int64(limit) * 2 * 24 * 3 / 2 // LimitFor: 2·limit slots of 24 bytes, 1.5× while it doubles
	debug.SetMemoryLimit(max(*diskMemory-tablePeak-nonHeapBytes, 16<<20))
	const window = 24 * time.Hour
	base := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	step := float64(window.Milliseconds()-1) / float64(n)
	rng := rand.New(rand.NewPCG(1, 2))
	id := make([]byte, 0, 32)
	for b.Loop() {
		s := dedup.New(window)
		s.UseDisk(disk, limit)
		var lookup, delay latencies
		var copies, found int
		// check feeds the record at position i; slot i carries a copy of an
		// earlier slot's ID if isCopy(i), chosen among the slots that
		// carried their own ID (the rule needs no memory: a bitmap of 100M
		// slots would be 12.5 MiB of the process's RSS).
		check := func(i int, timed bool) {
			ts := base + int64(float64(i)*step)
			j := i
			if isCopy(i) {
				// A copy of one of the n-1 IDs before it: within the window.
				back := min(i, n-1)
				j = i - 1 - rng.IntN(back)
				for isCopy(j) {
					j = i - 1 - rng.IntN(back)
				}
				copies++
			}
			id = strconv.AppendInt(append(id[:0], "evt-"...), int64(j), 10)
			k := s.Key(id)
			var t0 time.Time
			if timed {
				t0 = time.Now()
			}
			if s.CheckKey(k, ts, int64(i)) {
				found++
			}
			if timed {
				lookup.add(time.Since(t0))
			}
			if err := s.Err(); err != nil {
				b.Fatal(err)
			}
		}
		var done atomic.Int64
		stop := make(chan struct{})
		if *diskTrace > 0 {
			go traceMemory(disk, &done, *diskTrace, stop)
		}
		start := time.Now()
		for i := range n {
			if i&1023 == 0 {
				done.Store(int64(i))
			}
			check(i, i%256 == 0)
		}
		elapsed := time.Since(start)
		if found != copies {
			b.Fatalf("found %d duplicates, want the %d copies", found, copies)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "lookups/s")
		b.ReportMetric(lookup.quantile(0.99).Seconds()*1e6, "p99-µs")
		b.ReportMetric(lookup.quantile(0.5).Seconds()*1e6, "p50-µs")
		b.ReportMetric(float64(disk.Bytes())/float64(n), "disk-B/ID")
		b.ReportMetric(float64(s.DiskEntries())/float64(n)*100, "%on-disk")
		b.ReportMetric(float64(dedup.DiskLookups())/float64(n)*100, "%disk-lookups")
		b.ReportMetric(float64(peakRSS())/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(float64(s.Len()), "IDs-in-RAM")

		// The paced phase: record i is due at start + (i-n)/rate; the loop
		// sleeps until the next one is due, and every record's delay runs
		// from when it was due to its decision.
		if paced := int(*diskRate * diskPaced.Seconds()); paced > 0 {
			start := time.Now()
			for i := n; i < n+paced; i++ {
				due := start.Add(time.Duration(float64(i-n) / *diskRate * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				check(i, false)
				delay.add(time.Since(due))
			}
			if found != copies {
				b.Fatalf("paced: found %d duplicates, want the %d copies", found, copies)
			}
			b.ReportMetric(*diskRate, "paced-IDs/s")
			b.ReportMetric(delay.quantile(0.99).Seconds()*1e6, "p99-delay-µs")
			b.ReportMetric(delay.quantile(0.5).Seconds()*1e6, "p50-delay-µs")
			b.ReportMetric(float64(peakRSS())/(1<<20), "peak-RSS-MiB")
		}
		close(stop)
		if *diskTrace > 0 {
			b.Logf("pebble at the end:\n%s", disk.Metrics())
		}
		s.Free()
	}
}

// isCopy reports whether slot i of BenchmarkDedupDisk carries a copy of an
// earlier ID (1% of the slots past the first 1000, by a hash of i).
func isCopy(i int) bool {
	if i <= 1000 {
		return false
	}
	z := uint64(i) + 0x9e3779b97f4a7c15 // splitmix64
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return (z^z>>31)%100 == 0
}

// latencies is a histogram of durations with 64 buckets per power of two
// (quantiles within 1.6%), in fixed memory: a slice of every sample would
// be part of the RSS being measured.
type latencies struct {
	c [64 + 58*64]int64
	n int64
}

func (h *latencies) add(d time.Duration) {
	v := uint64(max(d, 0))
	i := int(v)
	if v >= 64 {
		shift := bits.Len64(v) - 7
		i = 64 + shift*64 + int(v>>shift-64)
	}
	h.c[i]++
	h.n++
}

// quantile returns the lower bound of the bucket holding quantile q.
func (h *latencies) quantile(q float64) time.Duration {
	want := int64(math.Ceil(q * float64(h.n)))
	var sum int64
	for i, c := range h.c {
		if sum += c; sum >= max(want, 1) {
			if i < 64 {
				return time.Duration(i)
			}
			shift := (i - 64) / 64
			return time.Duration(uint64(64+(i-64)%64) << shift)
		}
	}
	return 0
}

// traceMemory prints, every d until stop, where the process's memory is.
func traceMemory(disk *dedup.Disk, done *atomic.Int64, d time.Duration, stop chan struct{}) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/gc/heap/goal:bytes"},
	}
	t := time.NewTicker(d)
	defer t.Stop()
	start := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		metrics.Read(samples)
		m := disk.Memory()
		const mib = 1 << 20
		fmt.Fprintf(os.Stderr, "trace %4.0fs ids %6.2fM rss %5.1f hwm %5.1f | go objects %5.1f go mapped %5.1f goal %5.1f | table %5.1f | cache %5.1f (%d blocks, hit %.2f) memtables %5.1f | tables %d (%.0f MiB) open %d readers %.1f\n",
			time.Since(start).Seconds(), float64(done.Load())/1e6, float64(procStatus("VmRSS:"))/mib, float64(procStatus("VmHWM:"))/mib,
			float64(samples[0].Value.Uint64())/mib, float64(samples[1].Value.Uint64()-samples[2].Value.Uint64())/mib, float64(samples[3].Value.Uint64())/mib,
			float64(dedup.MappedBytes())/mib, float64(m.Cache)/mib, m.CacheBlocks, float64(m.CacheHits)/float64(max(m.CacheHits+m.CacheMis, 1)),
			float64(m.Memtables)/mib, m.Tables, float64(m.TableBytes)/mib, m.OpenTables, float64(m.FileCache)/mib)
	}
}

// peakRSS is the process's peak resident set (VmHWM), in bytes.
func peakRSS() int64 { return procStatus("VmHWM:") }

// procStatus is a field of /proc/self/status in kB, in bytes.
func procStatus(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field); ok {
			var kb int64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			return kb << 10
		}
	}
	return 0
}
