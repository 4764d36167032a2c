package benchmarks

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/aggregate"
	"github.com/usagepipe/usagepipe/ingest/decode"
	"github.com/usagepipe/usagepipe/ingest/dedup"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

var (
	stateEvents = flag.Int("state.events", 2_000_000, "BenchmarkStateSize: gen records fed through decode, dedup and aggregate")
	stateHeap   = flag.String("state.heap", "", "BenchmarkStateSize: also write the in-use heap profile (every allocation sampled) to this file")
)

// BenchmarkStateSize measures what usagepipe keeps in memory between
// flushes, per active account, per active user and per event ID in the
// dedup window, from a heap profile with every allocation sampled
// (runtime.MemProfileRate = 1). It feeds -state.events gen records (default
// population: 10k accounts, 300k users, 40 features, two quarters) through
// decode → dedup (one set per partition, 4 partitions) → aggregate, with a
// Drain every 200k events like a flush (the facts are dropped), then
// attributes the bytes still in use to the function of package aggregate or
// ingest/dedup that allocated them:
//
//   - per event ID: everything allocated under ingest/dedup (the sets),
//     plus their tables mapped outside the Go heap (dedup.MappedBytes);
//   - per user: nothing since the aggregator keeps no per-user state
//     between flushes (a user's events live in its account's log until the
//     Drain); the class stays so that a regression shows;
//   - per account: account (struct, name, accounts map), mergeCounts (the
//     open buckets' counts), add (the event log's buffers, kept for reuse),
//     addMonth, addLatest and latest.set (latest purchase per month).
//
// Run it once: go test ./benchmarks -run '^$' -bench StateSize -benchtime 1x
func BenchmarkStateSize(b *testing.B) {
	const partitions = 4
	corpus, _, firstTs := loadCorpus(b, *stateEvents, partitions)
	accounts, users := map[string]bool{}, map[string]bool{}
	{
		dec := decode.New(decode.Config{})
		var ev event.Event
		for i, r := range corpus {
			if dec.Decode(r.value, firstTs+int64(i), &ev) == nil {
				accounts[string(ev.AccountID)] = true
				if len(ev.UserID) > 0 {
					users[string(ev.AccountID)+"\x00"+string(ev.UserID)] = true
				}
			}
		}
	}
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = old }()

	var agg *aggregate.Aggregator
	var sets []*dedup.Set
	mapped0 := dedup.MappedBytes()
	for b.Loop() {
		// In a function of its own: go1.26's b.Loop keep-alive rewrite
		// crashes the compiler on this loop body inlined here.
		agg, sets = buildState(corpus, firstTs, partitions)
	}
	b.StopTimer()
	runtime.GC()
	runtime.GC()

	var recs []runtime.MemProfileRecord
	for {
		n, ok := runtime.MemProfile(recs, false)
		if ok {
			recs = recs[:n]
			break
		}
		recs = make([]runtime.MemProfileRecord, n+100)
	}
	bySite := map[string]int64{}
	var perID, perUser, perAccount, other int64
	for _, r := range recs {
		inuse := r.InUseBytes()
		if inuse <= 0 {
			continue
		}
		site, class := classify(r.Stack())
		if class == "" {
			continue // not the pipeline's state (the corpus, the test)
		}
		bySite[site] += inuse
		switch class {
		case "id":
			perID += inuse
		case "user":
			perUser += inuse
		case "account":
			perAccount += inuse
		default:
			other += inuse
		}
	}
	// Large dedup tables live outside the Go heap (ingest/dedup table.go),
	// where the heap profile does not see them.
	if m := dedup.MappedBytes() - mapped0; m > 0 {
		bySite["ingest/dedup table mappings (outside the Go heap)"] += m
		perID += m
	}
	ids := 0
	for _, s := range sets {
		ids += s.Len()
	}
	var sites []string
	for s := range bySite {
		sites = append(sites, s)
	}
	sort.Slice(sites, func(i, j int) bool { return bySite[sites[i]] > bySite[sites[j]] })
	var lines []string
	for _, s := range sites {
		lines = append(lines, fmt.Sprintf("%8.1f MiB  %s", float64(bySite[s])/(1<<20), s))
	}
	b.Logf("state after %d events: %d event IDs, %d accounts, %d users (aggregator names %d)\n%s",
		len(corpus), ids, len(accounts), len(users), agg.Names(), strings.Join(lines, "\n"))
	b.ReportMetric(float64(perID)/float64(ids), "B/event-id")
	b.ReportMetric(float64(perUser)/float64(len(users)), "B/user")
	b.ReportMetric(float64(perAccount)/float64(len(accounts)), "B/account")
	b.ReportMetric(float64(other)/(1<<20), "MiB-other")
	b.ReportMetric(float64(perID+perUser+perAccount+other)/(1<<20), "MiB-total")
	if *stateHeap != "" {
		f, err := os.Create(*stateHeap)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
	}
	runtime.KeepAlive(agg)
	runtime.KeepAlive(sets)
}

// buildState feeds corpus through decode, dedup and aggregate as the
// consumer does, with a Drain every 200k events, and returns the state.
func buildState(corpus []microRecord, firstTs int64, partitions int) (*aggregate.Aggregator, []*dedup.Set) {
	dec := decode.New(decode.Config{})
	agg := aggregate.New("usage-events")
	sets := make([]*dedup.Set, partitions)
	for p := range sets {
		sets[p] = dedup.New(24 * time.Hour)
		agg.Assign(int32(p))
	}
	offsets := make([]int64, partitions)
	var ev event.Event
	for i, r := range corpus {
		ts := firstTs + int64(i) // 1 ms apart, as gen stamps them
		off := offsets[r.part]
		offsets[r.part]++
		if dec.Decode(r.value, ts, &ev) != nil || sets[r.part].Check(ev.EventID, ts, off) {
			agg.Skip(r.part, off)
		} else {
			agg.Add(r.part, off, &ev)
		}
		if (i+1)%200_000 == 0 {
			agg.Drain(new(schema.Facts))
		}
	}
	agg.Drain(new(schema.Facts))
	return agg, sets
}

// classify names the pipeline function that allocated a stack's bytes and
// what they are per: "id", "user", "account", "other", or "" when no
// pipeline function is on the stack.
func classify(stack []uintptr) (site, class string) {
	frames := runtime.CallersFrames(stack)
	for {
		f, more := frames.Next()
		fn := f.Function
		switch {
		case strings.Contains(fn, "/ingest/dedup."):
			return short(fn), "id"
		case strings.Contains(fn, "/aggregate."):
			s := short(fn)
			switch {
			case strings.HasSuffix(s, ".user"):
				return s, "user"
			case strings.HasSuffix(s, ".account"), strings.HasSuffix(s, ".mergeCounts"), strings.HasSuffix(s, ").add"),
				strings.HasSuffix(s, ".addMonth"), strings.HasSuffix(s, ".addLatest"), strings.HasSuffix(s, ".set"):
				return s, "account"
			}
			return s, "other"
		}
		if !more {
			return "", ""
		}
	}
}

func short(fn string) string {
	if i := strings.LastIndexByte(fn, '/'); i >= 0 {
		return fn[i+1:]
	}
	return fn
}
