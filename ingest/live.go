package ingest

import (
	"context"
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
// Who recomputes a mark: touch gives the marks of the live quarter of a
// gathered flush to the live loop (owed) instead of the recompute loop
// (pending). A live round that does not write an owed account's row
// (not loaded, beyond the cache, unkeyed, a failure, the path turned off)
// gives the mark back to pending. So every mark is either recomputed or
// has a live row that the sweep confirms.
//
// on, facts, owed, delays and reset are guarded by server.mu; state and
// written by mu (taken after server.mu, never before); dirty is the live
// loop's.
type liveServe struct {
	maxBytes int64
	fiscal   quarter.Fiscal
	kick     chan struct{}

	on     bool             // gathering: the live path runs
	facts  schema.Facts     // rows of the flushes acknowledged since the last live round
	owed   map[string]int32 // their accounts whose marks of the live quarter the live loop answers for
	delays map[int64]int    // their records by record second
	reset  bool             // an assignment changed: drop the cache at the next round

	mu      sync.Mutex
	state   *live.State      // nil until the first live round
	written map[string]int32 // accounts with a live row by this process → its quarter

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

// liveMaxGathered bounds the fact rows gathered for one live round (about
// 10 s of a 100k events/s stream): past it, while a round is held up,
// the gathered rows are dropped and their marks recomputed instead.
const liveMaxGathered = 2_000_000

func newLiveServe(maxBytes int64, fiscalStart int, reg prometheus.Registerer) *liveServe {
	l := &liveServe{maxBytes: maxBytes, fiscal: quarter.Fiscal{StartMonth: max(fiscalStart, 1)}, kick: make(chan struct{}, 1),
		owed: map[string]int32{}, delays: map[int64]int{}, written: map[string]int32{}, dirty: map[string]bool{}}
	f := promauto.With(reg)
	l.rows = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_live_rows_total", Help: "Live rows written: rollup rows of the live quarter computed from the cached facts after a flush (docs/design.md, \"Live quarter\")."})
	l.loads = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_live_loads_total", Help: "Accounts loaded into the live cache from the fact tables."})
	l.errors = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_live_errors_total", Help: "Live rounds that failed (the cache is dropped and their accounts are recomputed)."})
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

// gather takes the rows of an acknowledged flush and its records' delays
// for the live loop, if the live path runs (under server.mu); it reports
// whether it took them. The strings are the flush's own, never
// rewritten, so only the row structs are copied.
func (s *server) gather(f *schema.Facts, delays map[int64]int) bool {
	l := s.lv
	if l == nil || !l.on {
		return false
	}
	g := &l.facts
	if len(g.UserActivity)+len(g.FeatureUsers)+len(g.EventCounts) > liveMaxGathered {
		// The live loop is held up (a long load, ClickHouse slow):
		// recompute instead, and start over with a fresh cache.
		s.giveBack()
		l.reset = true
	}
	g.UserActivity = append(g.UserActivity, f.UserActivity...)
	g.FeatureUsers = append(g.FeatureUsers, f.FeatureUsers...)
	g.EventCounts = append(g.EventCounts, f.EventCounts...)
	g.SeatEvents = append(g.SeatEvents, f.SeatEvents...)
	g.SeatPurchases = append(g.SeatPurchases, f.SeatPurchases...)
	for sec, n := range delays {
		l.delays[sec] += n
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
	return true
}

// giveBack hands the gathered rows' marks and delays to the recompute
// loop and drops the rows (under server.mu).
func (s *server) giveBack() {
	l := s.lv
	for a, q := range l.owed {
		s.queue(a, q)
	}
	for sec, n := range l.delays {
		s.delays[sec] += n
	}
	l.facts, l.owed, l.delays = schema.Facts{}, map[string]int32{}, map[int64]int{}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// queue adds account a's marks from quarter q to the recompute loop's
// batch (under server.mu).
func (s *server) queue(a string, q int32) {
	if old, ok := s.pending[a]; !ok || q < old {
		s.pending[a] = q
	}
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

// pace turns the live path on when the consumer is about caught up and
// off when it has a backlog (recompute loop).
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

// setLive turns the live path on or off. Off gives what was gathered back
// to the recompute loop and drops the cache (the live rows written are
// left to the sweep).
func (s *server) setLive(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lv.on == on {
		return
	}
	s.lv.on = on
	if !on {
		s.giveBack()
		s.lv.mu.Lock()
		s.lv.state = nil
		s.lv.mu.Unlock()
	}
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

// endLive turns the live path off for good (shutdown; after both loops
// stopped) and queues every account with a live row by this process, and
// every live row the sweep left to confirm, for a recompute: no live row
// of this process may stay the greatest when no process runs.
func (s *server) endLive() {
	if s.lv == nil {
		return
	}
	s.setLive(false)
	s.lv.mu.Lock()
	written := s.lv.written
	s.lv.written = map[string]int32{}
	s.lv.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	for a, q := range written {
		s.queue(a, q)
	}
	for a, q := range s.confirm {
		s.queue(a, q)
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
				s.log.Warn("served rollups: live round failed; its accounts are recomputed", "err", err, "backoff", backoff, "repeats", n)
			})
			if !backOff(ctx, &backoff) {
				return
			}
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// liveRound merges the gathered facts, loads the accounts they touch that
// are not cached (while the cache has room), writes the live rows of every
// changed account and refreshes the reader tables. Owed marks whose row it
// did not write go back to the recompute loop; the records' delays are
// reported here when none did, else by the recompute loop.
func (s *server) liveRound(ctx context.Context) (err error) {
	l := s.lv
	s.mu.Lock()
	on, reset, lastQ := l.on, l.reset, s.lastQ
	facts, owed, delays := l.facts, l.owed, l.delays
	l.facts, l.owed, l.delays, l.reset = schema.Facts{}, map[string]int32{}, map[int64]int{}, false
	s.mu.Unlock()
	var done map[string]bool // accounts whose live row this round wrote
	defer func() {
		s.mu.Lock()
		missed := false
		for a, q := range owed {
			if !done[a] {
				s.queue(a, q)
				missed = true
			}
		}
		if missed || err != nil {
			for sec, n := range delays {
				s.delays[sec] += n
			}
			select {
			case s.kick <- struct{}{}:
			default:
			}
		}
		s.mu.Unlock()
		if !missed && err == nil {
			s.observe(delays)
		}
	}()
	if !on || lastQ == 0 {
		return nil
	}
	rows, err := s.liveRows(ctx, &facts, lastQ, reset)
	if err != nil {
		l.mu.Lock()
		l.state = nil // start over: the next round loads again
		l.mu.Unlock()
		return err
	}
	if len(rows) == 0 {
		return nil
	}
	if err := s.sv.WriteLive(ctx, rows); err != nil {
		l.mu.Lock()
		l.state = nil
		l.mu.Unlock()
		return err
	}
	l.rows.Add(float64(len(rows)))
	l.dirty = map[string]bool{}
	done = make(map[string]bool, len(rows))
	l.mu.Lock()
	for _, r := range rows {
		done[r.Rollup.AccountID] = true
		l.written[r.Rollup.AccountID] = lastQ
	}
	l.mu.Unlock()
	// Readers see the rows once the reader tables have them, where they
	// are tables and this process keeps them. A failure is the recompute
	// loop's to retry: its next round refreshes every due quarter.
	if err := s.keepCopy(ctx, false); err != nil && ctx.Err() == nil {
		s.errs.Inc()
		s.cwarn.Do(func(n int) { s.log.Warn("reader tables: refresh failed; retrying", "err", err, "repeats", n) })
	}
	return nil
}

// liveRows brings the cache to quarter lastQ, loads the accounts facts
// touch that it lacks (while it has room), merges facts and returns the
// live rows of the changed accounts. It returns no rows when the cache
// was dropped while it loaded (setLive turned the path off: the caller
// gives the marks back).
func (s *server) liveRows(ctx context.Context, facts *schema.Facts, lastQ int32, reset bool) ([]schema.LiveRow, error) {
	l := s.lv
	l.mu.Lock()
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
	st := l.state
	// relock takes mu again after a load; false (unlocked) if the cache
	// was dropped meanwhile.
	relock := func() bool {
		l.mu.Lock()
		if l.state != st {
			l.mu.Unlock()
			return false
		}
		return true
	}
	now := time.Now()
	var need []string
	for a := range touchedAccounts(facts) {
		at, ok := l.state.LoadedAt(a)
		switch {
		case l.state.Unkeyed(a):
		case !ok && int64(l.state.Bytes()) < l.maxBytes:
			need = append(need, a)
		case ok && now.Sub(at) > liveMaxAge+time.Duration(nameHash(a)%uint64(liveMaxAge/2)):
			need = append(need, a)
		}
	}
	l.mu.Unlock()

	if len(carried) > 0 {
		ld, err := s.sv.LoadLive(ctx, carried, lastQ, false)
		if err != nil {
			return nil, err
		}
		if !relock() {
			return nil, nil
		}
		st.Merge(ld)
		l.mu.Unlock()
		for _, a := range carried {
			l.dirty[a] = true
		}
	}
	if len(need) > 0 {
		ld, err := s.sv.LoadLive(ctx, need, lastQ, true)
		if err != nil {
			return nil, err
		}
		if !relock() {
			return nil, nil
		}
		st.Load(need, ld, now)
		for i := len(need) - 1; i >= 0 && int64(st.Bytes()) > l.maxBytes; i-- {
			st.Drop(need[i]) // over the cache: recomputed instead
		}
		l.mu.Unlock()
		l.loads.Add(float64(len(need)))
		for _, a := range need {
			l.dirty[a] = true
		}
	}
	if !relock() {
		return nil, nil
	}
	defer l.mu.Unlock()
	st.Apply(facts, func(a string) { l.dirty[a] = true })
	rows := make([]schema.LiveRow, 0, len(l.dirty))
	for a := range l.dirty {
		if r, ok := st.Row(a); ok {
			rows = append(rows, r)
		}
	}
	return rows, nil
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
