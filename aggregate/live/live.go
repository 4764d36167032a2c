// Package live keeps, for a bounded set of accounts, the merge of the facts
// that an account's row of the live quarter (the stream's last quarter)
// depends on, and computes that row in Go by the contract's rules. It is
// the state behind live rows (docs/design.md, "Live quarter"): loaded once
// per account from a snapshot of the fact tables, then updated with each
// flush ClickHouse acknowledged, by the fact tables' own merge rules (set
// union, greatest last activity, greatest (occurred_ms, event_id), greatest
// covered_end per count bucket). Merging a row twice, rows in any order or
// rows of a replay changes nothing, and the state only ever holds rows of
// durable facts, so a row it computes can be stale but never counts an
// event that is not stored.
//
// A State is not safe for concurrent use: its owner (the live loop,
// ingest/live.go) guards it. It exports no metrics; its owner reports
// Bytes.
package live

import (
	"time"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
)

// State is the merged facts of the cached accounts for one live quarter.
type State struct {
	fiscal   quarter.Fiscal
	q        int32 // month index of the live quarter's first month
	accounts map[string]*account
	unkeyed  map[string]bool // accounts whose counts came from two partitions of a topic
	bytes    int
}

// New returns an empty State for the live quarter starting at month index
// q (a fiscal quarter's first month).
func New(fiscal quarter.Fiscal, q int32) *State {
	return &State{fiscal: fiscal, q: q, accounts: map[string]*account{}, unkeyed: map[string]bool{}}
}

// Quarter is the month index of the live quarter's first month.
func (s *State) Quarter() int32 { return s.q }

// Len is the number of cached accounts.
func (s *State) Len() int { return len(s.accounts) }

// Bytes estimates the memory the cached accounts hold.
func (s *State) Bytes() int { return s.bytes }

// Has reports whether account a is cached.
func (s *State) Has(a string) bool { _, ok := s.accounts[a]; return ok }

// LoadedAt is when account a was loaded (the time Load was given); ok is
// false when it is not cached.
func (s *State) LoadedAt(a string) (t time.Time, ok bool) {
	acc, ok := s.accounts[a]
	if !ok {
		return t, false
	}
	return acc.loaded, true
}

// Unkeyed reports whether account a left the cache because its counts came
// from two partitions of one topic: its events are not keyed by account
// (contract section 1 says they SHOULD be), so another process may write
// its facts, which the cache would miss. It is not loaded again into this
// State (a rollover's State judges the new quarter's counts afresh).
func (s *State) Unkeyed(a string) bool { return s.unkeyed[a] }

// Drop forgets account a.
func (s *State) Drop(a string) {
	if acc, ok := s.accounts[a]; ok {
		s.bytes -= acc.bytes
		delete(s.accounts, a)
	}
}

// Load caches the accounts listed, with the facts a snapshot read
// returned for them (schema.Served.LoadLive), at time now. An account
// already cached is replaced; an unkeyed one is not loaded.
func (s *State) Load(accounts []string, ld *schema.LiveLoad, now time.Time) {
	for _, a := range accounts {
		s.Drop(a)
		if s.unkeyed[a] {
			continue
		}
		acc := newAccount(now)
		s.accounts[a] = acc
		s.bytes += acc.bytes
	}
	s.apply(&ld.Facts, ld.CountSums, nil)
}

// Apply merges the rows of f that belong to cached accounts, calling
// changed (when not nil) for the cached accounts whose row f changes: f
// holds rows of the state's quarter for them (activity, feature users,
// counts), or seat or purchase facts dated before its end (an account may
// be named more than once).
func (s *State) Apply(f *schema.Facts, changed func(account string)) {
	s.apply(f, nil, changed)
}

func (s *State) apply(f *schema.Facts, sums []uint64, changed func(account string)) {
	// A flush's rows come in account order (aggregate.DrainAll): the
	// account is looked up, and changed called, once per run of rows.
	var (
		name       string
		acc        *account
		before     int
		seen, told bool
	)
	at := func(a string) *account {
		if !seen || a != name {
			if acc != nil {
				s.bytes += acc.bytes - before
			}
			name, acc, seen, told = a, s.accounts[a], true, false
			if acc != nil {
				before = acc.bytes
			}
		}
		return acc
	}
	tell := func() {
		if !told && changed != nil {
			told = true
			changed(name)
		}
	}
	defer func() {
		if acc != nil {
			s.bytes += acc.bytes - before
		}
	}()
	for i := range f.UserActivity {
		r := &f.UserActivity[i]
		if acc := at(r.Account); acc != nil && s.in(r.Month) {
			tell()
			acc.activity(r.User, r.LastMs)
		}
	}
	for i := range f.FeatureUsers {
		r := &f.FeatureUsers[i]
		if acc := at(r.Account); acc != nil && s.in(r.Month) {
			tell()
			acc.featureUser(r.Feature, r.User)
		}
	}
	for i := range f.EventCounts {
		r := &f.EventCounts[i]
		if a := at(r.Account); a != nil && s.in(r.Month) {
			tell()
			var sum uint64
			if sums != nil {
				sum = sums[i]
			}
			a.count(r, sum)
			if a.unkeyed() {
				s.bytes += a.bytes - before
				acc = nil // its bytes leave with it
				s.Drop(r.Account)
				s.unkeyed[r.Account] = true
			}
		}
	}
	for i := range f.SeatEvents {
		r := &f.SeatEvents[i]
		if acc := at(r.Account); acc != nil && s.upTo(r.Month) {
			tell()
			acc.seat(r)
		}
	}
	for i := range f.SeatPurchases {
		r := &f.SeatPurchases[i]
		if acc := at(r.Account); acc != nil && s.upTo(r.Month) {
			tell()
			acc.purchase(r)
		}
	}
}

// Rollover returns the state of the next live quarter q: every cached
// account keeps its seat holders and purchase (the latest events of its
// whole history, which the new quarter's row needs as well) and starts
// with no activity and no counts (so no partitions seen); the caller
// merges the new quarter's flushes (Apply). The two States share nothing
// that either changes, so s stays usable (for the quarter's late facts).
func (s *State) Rollover(q int32) *State {
	n := New(s.fiscal, q)
	for a, acc := range s.accounts {
		c := acc.next()
		n.accounts[a] = c
		n.bytes += c.bytes
	}
	return n
}

// in reports whether month index m lies in the live quarter.
func (s *State) in(m int32) bool { return m >= s.q && m < s.q+3 }

// upTo reports whether month index m lies before the live quarter's end.
func (s *State) upTo(m int32) bool { return m < s.q+3 }

// Row computes account a's live rows of the live quarter by the
// contract's rules (section 4) over its merged facts: its rollup row and
// its feature set (features in name order); ok is false when a is not
// cached. They equal what schema/sql/compute_rollups.sql and
// compute_features.sql compute for the state's quarter from the same
// facts: activity is merged for that quarter only, and seat facts only
// when dated before its end (so also for the quarter before the live one,
// which the live loop keeps for a while after a rollover).
func (s *State) Row(a string) (row schema.LiveRow, ok bool) {
	acc := s.accounts[a]
	if acc == nil {
		return row, false
	}
	r := &row.Rollup
	*r = schema.Rollup{
		AccountID:      a,
		QuarterStart:   quarter.MonthStart(s.q),
		QuarterEnd:     quarter.MonthStart(s.q + 3),
		Quarter:        s.fiscal.Label(s.q),
		LastActivityAt: time.Unix(0, 0).UTC(),
	}
	if acc.hasPurchase {
		r.SeatsPurchased = uint64(acc.bought.seats)
	}
	r.SeatsAssigned, r.ActiveUsers, r.ActiveAssignedUsers = acc.seatsAssigned, acc.active, acc.activeAssigned
	if acc.lastMs > 0 {
		r.LastActivityAt = time.Unix(acc.lastMs/1000, 0).UTC()
	}
	if r.SeatsPurchased > 0 {
		r.SeatUtilization = float64(r.SeatsAssigned) / float64(r.SeatsPurchased)
	}
	if r.SeatsAssigned > 0 {
		r.ActivationRate = float64(r.ActiveAssignedUsers) / float64(r.SeatsAssigned)
	}
	r.Logins, r.FeatureEvents = acc.logins, acc.featureEvents
	for i := range acc.features {
		f := &acc.features[i]
		if f.nUsers > 0 {
			r.FeaturesUsed++ // compute_rollups.sql: distinct features of fact_feature_users
		}
		if f.events == 0 {
			continue // compute_features.sql: HAVING events > 0
		}
		row.Features = append(row.Features, f.name)
		row.FeatureUsers = append(row.FeatureUsers, f.nUsers)
		row.FeatureEvents = append(row.FeatureEvents, f.events)
	}
	return row, true
}

// Accounts lists the cached accounts (any order).
func (s *State) Accounts() []string {
	out := make([]string, 0, len(s.accounts))
	for a := range s.accounts {
		out = append(out, a)
	}
	return out
}
