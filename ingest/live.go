package ingest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/usagepipe/usagepipe/aggregate/live"
	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
)

// liveServe is the serve loop's live path (docs/design.md, "Live
// quarter"): while the consumer is about caught up, every acknowledged
// flush's fact rows are gathered (touch), and the live loop merges them
// into a cache of the accounts' facts of the live quarter, loading the
// accounts it does not hold yet, and writes one live row per changed
// account, then refreshes the reader tables where they are tables. It
// runs beside the recompute loop, so a long recompute or sweep never
// holds a live row back. Live rows are for freshness only: marks stay
// unsatisfied until a recompute, which the recompute loop's sweep runs.
//
// on, facts, delays and reset are guarded by server.mu; state by mu (the
// live loop mutates it, the recompute loop asks covers); dirty is the
// live loop's.
type liveServe struct {
	maxBytes int64
	fiscal   quarter.Fiscal
	kick     chan struct{}

	on     bool          // gathering: the live path runs
	facts  schema.Facts  // rows of the flushes acknowledged since the last live round
	delays map[int64]int // their records by record second
	reset  bool          // an assignment changed: drop the cache at the next round

	mu    sync.Mutex
	state *live.State // nil until the first live round

	dirty map[string]bool // changed accounts whose live row is not written yet

	rows   prometheus.Counter
	loads  prometheus.Counter
	errors prometheus.Counter
}

// confirmChunk is how many accounts whose greatest row is live the
// recompute loop recomputes per round for the sweep: a sweep's
// confirmations are spread over rounds (a whole sweep of 10k accounts
// takes seconds of ClickHouse).
const confirmChunk = 1000

// liveMaxAge: a cached account touched this long after its load (plus up
// to half as much again, by a hash of its name, so that loads spread) is
// loaded again. It bounds what a cache can miss for good: facts another
// process wrote for a keyed account (a zombie's flush past the new
// owner's position, seat events keyed otherwise).
const liveMaxAge = 10 * time.Minute

// The consumer's lag decides the live path with hysteresis: on below
// liveLag records, off only above liveOffLag (or unknown lag), so that a
// slow flush does not drop and reload the cache.
const liveOffLag = 10 * liveLag

func newLiveServe(maxBytes int64, fiscalStart int, reg prometheus.Registerer) *liveServe {
	if fiscalStart == 0 {
		fiscalStart = 1
	}
	l := &liveServe{maxBytes: maxBytes, fiscal: quarter.Fiscal{StartMonth: fiscalStart}, kick: make(chan struct{}, 1), delays: map[int64]int{}, dirty: map[string]bool{}}
	f := promauto.With(reg)
	l.rows = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_live_rows_total", Help: "Live rows written: rollup rows of the live quarter computed from the cached facts after a flush (docs/design.md, \"Live quarter\")."})
	l.loads = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_live_loads_total", Help: "Accounts loaded into the live cache from the fact tables."})
	l.errors = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_live_errors_total", Help: "Live rounds that failed (their accounts are recomputed instead)."})
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "usagepipe_serve_live_cache_bytes", Help: "Estimated memory of the live cache (bounded by --live-cache-mib)."}, func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.state == nil {
			return 0
		}
		return float64(l.state.Bytes())
	})
	return l
}

// gather copies the rows of an acknowledged flush and its records'
// delays (under server.mu); it reports whether it took them. The strings
// are the flush's own, never rewritten, so only the row structs are
// copied.
func (l *liveServe) gather(f *schema.Facts, delays map[int64]int) bool {
	if !l.on {
		return false
	}
	l.facts.UserActivity = append(l.facts.UserActivity, f.UserActivity...)
	l.facts.FeatureUsers = append(l.facts.FeatureUsers, f.FeatureUsers...)
	l.facts.EventCounts = append(l.facts.EventCounts, f.EventCounts...)
	l.facts.SeatEvents = append(l.facts.SeatEvents, f.SeatEvents...)
	l.facts.SeatPurchases = append(l.facts.SeatPurchases, f.SeatPurchases...)
	for sec, n := range delays {
		l.delays[sec] += n
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
	return true
}

// cached reports whether the live cache holds account a.
func (l *liveServe) cached(a string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state != nil && l.state.Has(a)
}

// liveOn reports whether the live path runs.
func (s *server) liveOn() bool {
	if s.lv == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lv.on
}

// covers reports whether account a's marks from quarter q need no
// recompute now: a is cached and q is the live quarter, so its live row
// is written (or about to be) by the live loop.
func (l *liveServe) covers(a string, q int32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state != nil && q >= l.state.Quarter() && l.state.Has(a)
}

// pace turns the live path on when the consumer is about caught up and
// off when it has a backlog (recompute loop). Off drops the cache at the
// next live round: what it misses meanwhile is not gathered. The live
// rows it wrote are left to the sweep.
func (s *server) pace() {
	if s.lv == nil || s.lag == nil {
		return
	}
	lag, known := s.lag()
	switch {
	case known && lag < liveLag:
		s.setLive(true)
	case !known || lag > liveOffLag:
		s.setLive(false)
	}
}

func (s *server) setLive(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lv.on == on {
		return
	}
	s.lv.on = on
	s.lv.reset = true
	s.lv.facts = schema.Facts{}
	for sec, n := range s.lv.delays {
		s.delays[sec] += n // the recompute loop reports them
	}
	s.lv.delays = map[int64]int{}
}

// assignmentChanged drops the live cache at the next live round: accounts
// of a partition another process wrote meanwhile miss its facts.
func (s *server) assignmentChanged() {
	if s.lv == nil {
		return
	}
	s.mu.Lock()
	s.lv.reset = true
	s.mu.Unlock()
}

// endLive turns the live path off for good (shutdown, the final rounds of
// an --until-caught-up run; after both loops stopped) and queues every
// cached account, and every live row the sweep left to confirm, for a
// recompute: no live row of this process may stay the greatest when no
// process runs.
func (s *server) endLive() {
	if s.lv == nil {
		return
	}
	s.setLive(false)
	s.lv.mu.Lock()
	state := s.lv.state
	s.lv.state = nil
	s.lv.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	queue := func(a string, q int32) {
		if old, ok := s.pending[a]; !ok || q < old {
			s.pending[a] = q
		}
	}
	if state != nil {
		for _, a := range state.Accounts() {
			queue(a, state.Quarter())
		}
	}
	for a, q := range s.confirm {
		queue(a, q)
	}
	s.confirm = map[string]int32{}
}

// liveLoop runs live rounds after flushes until ctx is done.
func (s *server) liveLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.lv.kick:
		}
		if err := s.liveRound(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.lv.errors.Inc()
			s.lwarn.Do(func(n int) {
				s.log.Warn("served rollups: live rows failed; recomputing instead", "err", err, "backoff", backoff, "repeats", n)
			})
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			select { // try again without waiting for a flush
			case s.lv.kick <- struct{}{}:
			default:
			}
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// liveRound merges the gathered facts, loads the accounts they touch that
// are not cached (while the cache has room), writes the live rows of every
// changed account and refreshes the reader tables. The records' delays
// are reported here when every account they touched got its live row,
// else by the recompute loop.
func (s *server) liveRound(ctx context.Context) error {
	l := s.lv
	s.mu.Lock()
	on, reset, lastQ := l.on, l.reset, s.lastQ
	facts, delays := l.facts, l.delays
	l.facts, l.delays, l.reset = schema.Facts{}, map[int64]int{}, false
	s.mu.Unlock()
	missed := false // an account of these facts gets no live row
	defer func() {
		if !missed {
			s.observe(delays)
			return
		}
		s.mu.Lock()
		for sec, n := range delays {
			s.delays[sec] += n
		}
		s.mu.Unlock()
	}()

	// fail drops the cache: the recompute loop then recomputes these
	// accounts (covers is false), and the next round loads them again.
	fail := func(err error) error {
		missed = true
		l.mu.Lock()
		l.state = nil
		l.mu.Unlock()
		return err
	}

	l.mu.Lock()
	if !on || lastQ == 0 {
		l.state, l.dirty = nil, map[string]bool{}
		l.mu.Unlock()
		missed = true
		return nil
	}
	var carried []string
	switch {
	case reset || l.state == nil || l.state.Quarter() > lastQ:
		l.state, l.dirty = live.New(l.fiscal, lastQ), map[string]bool{}
	case l.state.Quarter() < lastQ:
		// Rollover: the cached accounts keep their seats and get their
		// row of the new quarter from a load of its (short) activity,
		// written at once: the new quarter's grid without a recompute
		// of every account.
		l.state, l.dirty = l.state.Rollover(lastQ), map[string]bool{}
		carried = l.state.Accounts()
	}
	now := time.Now()
	var need []string
	for a := range touchedAccounts(&facts) {
		if l.state.Unkeyed(a) {
			missed = true
			continue
		}
		at, ok := l.state.LoadedAt(a)
		switch {
		case !ok && int64(l.state.Bytes()) < l.maxBytes:
			need = append(need, a)
		case !ok:
			missed = true // beyond the cache: recomputed
		case now.Sub(at) > liveMaxAge+time.Duration(nameHash(a)%uint64(liveMaxAge/2)):
			need = append(need, a)
		}
	}
	l.mu.Unlock()

	if len(carried) > 0 {
		ld, err := s.sv.LoadLive(ctx, carried, lastQ, false)
		if err != nil {
			return fail(fmt.Errorf("live cache: %w", err))
		}
		l.mu.Lock()
		l.state.Merge(ld)
		l.mu.Unlock()
		for _, a := range carried {
			l.dirty[a] = true
		}
	}
	if len(need) > 0 {
		ld, err := s.sv.LoadLive(ctx, need, lastQ, true)
		if err != nil {
			return fail(fmt.Errorf("live cache: %w", err))
		}
		l.mu.Lock()
		l.state.Load(need, ld, now)
		l.mu.Unlock()
		l.loads.Add(float64(len(need)))
		for _, a := range need {
			l.dirty[a] = true
		}
	}
	l.mu.Lock()
	l.state.Apply(&facts, func(a string) { l.dirty[a] = true })
	rows := make([]schema.LiveRow, 0, len(l.dirty))
	for a := range l.dirty {
		if r, ok := l.state.Row(a); ok {
			rows = append(rows, r)
		}
	}
	l.mu.Unlock()
	if len(rows) == 0 {
		return nil
	}
	if err := s.sv.WriteLive(ctx, rows); err != nil {
		return fail(fmt.Errorf("live rows: %w", err))
	}
	l.rows.Add(float64(len(rows)))
	l.dirty = map[string]bool{}
	// Readers see the rows once the reader tables have them, where they
	// are tables and this process keeps them. A failure is the recompute
	// loop's to retry (its next round refreshes every due quarter).
	if err := s.keepCopyLocked(ctx, false); err != nil {
		missed = true
		return fmt.Errorf("reader tables: %w", err)
	}
	return nil
}

// touchedAccounts lists the accounts of f's rows that a live cache merges.
func touchedAccounts(f *schema.Facts) map[string]bool {
	out := map[string]bool{}
	for i := range f.UserActivity {
		out[f.UserActivity[i].Account] = true
	}
	for i := range f.FeatureUsers {
		out[f.FeatureUsers[i].Account] = true
	}
	for i := range f.EventCounts {
		out[f.EventCounts[i].Account] = true
	}
	for i := range f.SeatEvents {
		out[f.SeatEvents[i].Account] = true
	}
	for i := range f.SeatPurchases {
		out[f.SeatPurchases[i].Account] = true
	}
	return out
}

// nameHash is FNV-1a of an account name.
func nameHash(a string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(a); i++ {
		h = (h ^ uint64(a[i])) * 1099511628211
	}
	return h
}
