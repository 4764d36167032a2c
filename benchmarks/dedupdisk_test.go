package benchmarks

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/ingest/dedup"
)

var (
	diskIDs    = flag.Int("dedupdisk.ids", 100_000_000, "BenchmarkDedupDisk: event IDs fed through one partition's filter, all inside one 24h window")
	diskMemory = flag.Int64("dedupdisk.memory", 256<<20, "BenchmarkDedupDisk: the RAM cap: table limit 1/4 of it (64 bytes an entry), Pebble's cache 1/8, its write buffer 1/32, GOMEMLIMIT 1/2")
	diskDir    = flag.String("dedupdisk.dir", "", "BenchmarkDedupDisk: where the on-disk store lives (default: a temporary directory)")
)

// BenchmarkDedupDisk is issue 11's sustained run: -dedupdisk.ids IDs (1% of
// them copies of earlier IDs, which must all be found) through one filter
// whose 24h window holds them all, under a RAM cap, so that all but the
// newest hours live in the on-disk store and every lookup of a new ID reads
// it. It reports lookups per second, the p99 of one lookup (every 256th is
// timed), disk bytes per ID and the process's peak RSS. Run it alone:
//
//	go test ./benchmarks -run '^$' -bench '^BenchmarkDedupDisk$' -benchtime 1x -v
func BenchmarkDedupDisk(b *testing.B) {
	n := *diskIDs
	dir := *diskDir
	if dir == "" {
		dir = b.TempDir()
	}
	debug.SetMemoryLimit(*diskMemory / 2)
	disk, err := dedup.OpenDisk(dedup.DiskConfig{Dir: dir + "/dedup", CacheBytes: *diskMemory / 8, MemtableBytes: uint64(*diskMemory / 32)})
	if err != nil {
		b.Fatal(err)
	}
	defer disk.Close()
	const window = 24 * time.Hour
	base := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	step := float64(window.Milliseconds()-1) / float64(n)
	rng := rand.New(rand.NewPCG(1, 2))
	id := make([]byte, 0, 32)
	for b.Loop() {
		s := dedup.New(window)
		s.UseDisk(disk, int(*diskMemory/4/64))
		var samples []time.Duration
		var copies, found int
		isCopy := make([]uint64, n/64+1) // slots that carried a copy instead of their own ID
		start := time.Now()
		for i := range n {
			ts := base + int64(float64(i)*step)
			j := i
			if i > 1000 && rng.IntN(100) == 0 {
				j = rng.IntN(i) // a copy of an earlier ID: within the window
				for isCopy[j/64]&(1<<(j%64)) != 0 {
					j = rng.IntN(i) // that slot never carried its own ID
				}
				isCopy[i/64] |= 1 << (i % 64)
				copies++
			}
			id = strconv.AppendInt(append(id[:0], "evt-"...), int64(j), 10)
			k := s.Key(id)
			timed := i%256 == 0
			var t0 time.Time
			if timed {
				t0 = time.Now()
			}
			if s.CheckKey(k, ts, int64(i)) {
				found++
			}
			if timed {
				samples = append(samples, time.Since(t0))
			}
			if err := s.Err(); err != nil {
				b.Fatal(err)
			}
		}
		elapsed := time.Since(start)
		if found != copies {
			b.Fatalf("found %d duplicates, want the %d copies", found, copies)
		}
		slices.Sort(samples)
		b.ReportMetric(float64(n)/elapsed.Seconds(), "lookups/s")
		b.ReportMetric(float64(samples[len(samples)*99/100].Nanoseconds())/1e3, "p99-µs")
		b.ReportMetric(float64(samples[len(samples)/2].Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(disk.Bytes())/float64(n), "disk-B/ID")
		b.ReportMetric(float64(s.DiskEntries())/float64(n)*100, "%on-disk")
		b.ReportMetric(float64(dedup.DiskLookups())/float64(n)*100, "%disk-lookups")
		b.ReportMetric(float64(peakRSS())/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(float64(s.Len()), "IDs-in-RAM")
		s.Free()
	}
}

// peakRSS is the process's peak resident set (VmHWM), in bytes.
func peakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			return kb << 10
		}
	}
	return 0
}
