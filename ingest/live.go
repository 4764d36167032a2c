package ingest

import (
	"context"
	"sync"
	"sync/atomic"
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
// After a rollover the cache keeps the quarter before for a while
// (prev), so that its late facts get live rows too.
//
// Who recomputes a mark: touch gives the marks of a gathered flush from
// the quarters the cache answers for (from: the live quarter, and the
// one before while it is kept) to the live loop (owed) instead of the
// recompute loop (pending). A live round that does not write an owed
// account's rows (not loaded, beyond the cache, unkeyed, not in prev, a
// failure, the path turned off) gives the mark back to pending. So every
// mark is either recomputed or has live rows that the sweep confirms.
//
// on, facts, owed, delays and reset are guarded by server.mu; state,
// prev, prevUntil and written by mu (taken after server.mu, never
// before); dirty and prevDirty are the live loop's.
type liveServe struct {
	maxBytes int64
	prevFor  time.Duration // livePrevFor (tests shorten it)
	fiscal   quarter.Fiscal
	kick     chan struct{}

	on     bool             // gathering: the live path runs
	facts  schema.Facts     // rows of the flushes acknowledged since the last live round
	owed   map[string]int32 // their accounts whose marks (from the quarter noted) the live loop answers for
	delays map[int64]int    // their records by record second
	reset  bool             // an assignment changed or the path turned off: drop the cache at the next round

	mu        sync.Mutex
	state     *live.State // the live quarter's; nil until the first live round
	prev      *live.State // the quarter before, kept for its late facts until prevUntil after a rollover; nil: none
	prevUntil time.Time
	written   map[string]int32 // accounts with a live row by this process → its earliest quarter

	// The quarters of state and prev (0: none), for touch, which must not
	// wait for mu.
	curQ, prevQ atomic.Int32

	dirty     map[string]bool // changed accounts whose live row is not written yet
	prevDirty map[string]bool // those whose row of prev's quarter changed too

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
	l := &liveServe{maxBytes: maxBytes, prevFor: livePrevFor, fiscal: quarter.Fiscal{StartMonth: max(fiscalStart, 1)}, kick: make(chan struct{}, 1),
		owed: map[string]int32{}, delays: map[int64]int{}, written: map[string]int32{}, dirty: map[string]bool{}, prevDirty: map[string]bool{}}
	f := promauto.With(reg)
	l.rows = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_live_rows_total", Help: "Live rows written: rollup rows of the live quarter (and, for 10 minutes after a rollover, of the quarter before) computed from the cached facts after a flush (docs/design.md, \"Live quarter\")."})
	l.loads = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_live_loads_total", Help: "Accounts loaded into the live cache from the fact tables."})
	l.errors = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_live_errors_total", Help: "Live rounds that failed (the cache is dropped and their accounts are recomputed)."})
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "usagepipe_serve_live_cache_bytes", Help: "Estimated memory of the live cache (the live quarter's part bounded by --live-cache-mib; for 10 minutes after a rollover the quarter before is kept beside it)."}, func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return float64(l.bytes())
	})
	return l
}

// livePrevFor is how long after a rollover the cache keeps the quarter
// before for its late facts (the last flushes before the boundary, events
// a little out of order): their rows are then live rows too, not
// recomputes. Later facts of it are recomputed. It is kept beside the
// live quarter's cache, which --live-cache-mib bounds (so the cache may
// hold up to twice that for this long).
const livePrevFor = liveMaxAge

// bytes is the estimated memory of the cache (under mu).
func (l *liveServe) bytes() int {
	n := 0
	if l.state != nil {
		n += l.state.Bytes()
	}
	if l.prev != nil {
		n += l.prev.Bytes()
	}
	return n
}

// set replaces the cache's states (under mu; the live loop clears dirty
// and prevDirty as it replaces them).
func (l *liveServe) set(state, prev *live.State) {
	l.state, l.prev = state, prev
	var cq, pq int32
	if state != nil {
		cq = state.Quarter()
	}
	if prev != nil {
		pq = prev.Quarter()
	}
	l.curQ.Store(cq)
	l.prevQ.Store(pq)
}

// drop drops the cache: the next round starts over.
func (l *liveServe) drop() {
	l.mu.Lock()
	l.set(nil, nil)
	l.mu.Unlock()
}

// from is the earliest quarter whose marks the live loop can answer for
// while the stream's last quarter is lastQ: lastQ, or the quarter before
// while the cache keeps it, or will at its next round's rollover.
func (l *liveServe) from(lastQ int32) int32 {
	if l.curQ.Load() == lastQ-3 || l.prevQ.Load() == lastQ-3 {
		return lastQ - 3
	}
	return lastQ
}

// gather takes the rows of an acknowledged flush for the live loop, if
// the live path runs (under server.mu); it reports whether it took them.
// The strings are the flush's own, never rewritten, so only the row
// structs are copied.
func (s *server) gather(f *schema.Facts) bool {
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
		// A round that read on before this may build a cache after the
		// drop; reset keeps the next round from using it (it would lack
		// the flushes acknowledged while the path is off).
		s.giveBack()
		s.lv.drop()
		s.lv.reset = true
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
// changed account and refreshes the reader tables. Owed marks whose rows it
// did not write go back to the recompute loop; the records' delays are
// reported here when none did, else by the recompute loop.
func (s *server) liveRound(ctx context.Context) (err error) {
	l := s.lv
	s.mu.Lock()
	on, reset, lastQ := l.on, l.reset, s.lastQ
	facts, owed, delays := l.facts, l.owed, l.delays
	l.facts, l.owed, l.delays = schema.Facts{}, map[string]int32{}, map[int64]int{}
	if on {
		// (Off, the reset stays for the first round after the path
		// turns on again: a round that read it on just before it turned
		// off may have built a cache after the drop.)
		l.reset = false
	}
	s.mu.Unlock()
	// Accounts whose rows this round wrote: of the live quarter (done),
	// and of the quarter before (donePrev, a subset).
	var done, donePrev map[string]bool
	defer func() {
		s.mu.Lock()
		missed := false
		for a, q := range owed {
			// A mark from quarter q is answered by the rows of q and of
			// every quarter after it, up to lastQ.
			if !done[a] || q < lastQ && !(q == lastQ-3 && donePrev[a]) {
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
	rows, prevRows, err := s.liveRows(ctx, &facts, lastQ, reset)
	if err != nil {
		l.drop() // start over: the next round loads again
		return err
	}
	if len(rows) == 0 {
		return nil
	}
	// One quarter per write (each marks its quarter of the reader
	// tables); the live quarter's last, so that no account's row of it
	// is written while its row of the quarter before is not. Each
	// account is in written before its row may land (a stop recomputes
	// them: a failed write may have landed rows).
	for _, w := range []struct {
		rows []schema.LiveRow
		q    int32
	}{{prevRows, lastQ - 3}, {rows, lastQ}} {
		l.mu.Lock()
		for _, r := range w.rows {
			if q, ok := l.written[r.Rollup.AccountID]; !ok || q > w.q {
				l.written[r.Rollup.AccountID] = w.q
			}
		}
		l.mu.Unlock()
		if err := s.sv.WriteLive(ctx, w.rows); err != nil {
			l.drop()
			return err
		}
	}
	l.rows.Add(float64(len(rows) + len(prevRows)))
	l.dirty, l.prevDirty = map[string]bool{}, map[string]bool{}
	done, donePrev = make(map[string]bool, len(rows)), make(map[string]bool, len(prevRows))
	for _, r := range prevRows {
		donePrev[r.Rollup.AccountID] = true
	}
	for _, r := range rows {
		done[r.Rollup.AccountID] = true
	}
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
// live rows of the changed accounts: of the live quarter, and of the
// quarter before where the cache keeps it (prevRows, for accounts that
// also have a row in rows). It returns no rows when the cache was dropped
// while it loaded (setLive turned the path off: the caller gives the
// marks back).
func (s *server) liveRows(ctx context.Context, facts *schema.Facts, lastQ int32, reset bool) (rows, prevRows []schema.LiveRow, err error) {
	l := s.lv
	now := time.Now()
	l.mu.Lock()
	switch {
	case reset || l.state == nil || l.state.Quarter() > lastQ:
		l.set(live.New(l.fiscal, lastQ), nil)
		l.dirty, l.prevDirty = map[string]bool{}, map[string]bool{}
	case l.state.Quarter() < lastQ:
		// Rollover: the cached accounts keep their seats and start the
		// new quarter with no activity. No load: this round's facts hold
		// the first of the new quarter this process wrote (touch moves
		// lastQ with the flush that first has it, and the cache merged
		// every flush before), so the new quarter's grid is written at
		// once, without a recompute or a read of every account. The old
		// quarter stays for its late facts (livePrevFor), if it is the
		// one before.
		old := l.state
		var prev *live.State
		if old.Quarter() == lastQ-3 {
			prev, l.prevUntil = old, now.Add(l.prevFor)
		}
		l.set(old.Rollover(lastQ), prev)
		l.dirty, l.prevDirty = map[string]bool{}, map[string]bool{}
		for _, a := range l.state.Accounts() {
			l.dirty[a] = true
		}
	case l.prev != nil && now.After(l.prevUntil):
		l.set(l.state, nil)
		l.prevDirty = map[string]bool{}
	}
	st, pv := l.state, l.prev
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
	var need []string
	for a := range touchedAccounts(facts, lastQ) {
		at, ok := st.LoadedAt(a)
		switch {
		case st.Unkeyed(a):
		case !ok && int64(st.Bytes()) < l.maxBytes:
			need = append(need, a)
		case ok && now.Sub(at) > liveMaxAge+time.Duration(nameHash(a)%uint64(liveMaxAge/2)):
			need = append(need, a)
		}
	}
	l.mu.Unlock()

	if len(need) > 0 {
		ld, err := s.sv.LoadLive(ctx, need, lastQ)
		if err != nil {
			return nil, nil, err
		}
		if !relock() {
			return nil, nil, nil
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
		return nil, nil, nil
	}
	defer l.mu.Unlock()
	st.Apply(facts, func(a string) { l.dirty[a] = true })
	if pv != nil {
		// An account whose row of the quarter before changes gets its
		// live quarter's row written too (a mark from that quarter is
		// answered by both).
		pv.Apply(facts, func(a string) { l.prevDirty[a], l.dirty[a] = true, true })
	}
	rows = make([]schema.LiveRow, 0, len(l.dirty))
	for a := range l.dirty {
		r, ok := st.Row(a)
		if !ok {
			continue
		}
		rows = append(rows, r)
		if l.prevDirty[a] {
			if r, ok := pv.Row(a); ok {
				prevRows = append(prevRows, r)
			}
		}
	}
	return rows, prevRows, nil
}

// touchedAccounts lists the accounts whose row of the live quarter q f
// changes (activity of q on, seat facts of any month): an account with
// late facts only is not worth a load (its marks are recomputed).
func touchedAccounts(f *schema.Facts, q int32) map[string]bool {
	out := map[string]bool{}
	for i := range f.UserActivity {
		if f.UserActivity[i].Month >= q {
			out[f.UserActivity[i].Account] = true
		}
	}
	for i := range f.FeatureUsers {
		if f.FeatureUsers[i].Month >= q {
			out[f.FeatureUsers[i].Account] = true
		}
	}
	for i := range f.EventCounts {
		if f.EventCounts[i].Month >= q {
			out[f.EventCounts[i].Account] = true
		}
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
