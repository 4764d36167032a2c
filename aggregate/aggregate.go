// Package aggregate turns accepted, non-duplicate events into the facts one
// flush writes to ClickHouse (schema.Facts). It keeps only what changed
// since the last flush — the rollups themselves are computed by ClickHouse
// views over all facts ever written (see package schema) — plus, per owned
// partition, the event counts of the current offset bucket.
//
// Why this is exact under crashes, replays and zombie writers: every fact is
// either a set member (account-month, feature user), a maximum (latest
// activity, latest seat event, latest purchase), or a count that is a pure
// function of a fixed offset range of one partition ([bucket start,
// covered end)), stored with covered_end as its ReplacingMergeTree version.
// Writing any of them twice, or writing a count computed from more of the
// same offsets, cannot change what the views compute. A restarted consumer
// therefore rewinds to the start of the bucket that holds its committed
// offset (BucketStart) and simply recomputes.
//
// Layout: state is grouped per account and, inside it, per user, so that an
// event touches one map of accounts and then small per-account structures
// that stay in cache; names are interned once (the account and user structs
// are the interned names) and the hot path does not allocate once an
// account, user and month have been seen.
//
// An Aggregator is owned by one goroutine (the consumer loop) and is not
// safe for concurrent use. It exports no metrics.
package aggregate

import (
	"bytes"
	"hash/maphash"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// BucketStart returns the first offset of the count bucket holding offset.
func BucketStart(offset int64) int64 { return offset - offset%schema.BucketSize }

// latest is the latest seat event or purchase under the contract's tie
// rule (greater occurred_at, then greater event_id).
type latest struct {
	month    int32
	ms       int64
	eventID  []byte // owned copy, reused across flushes
	assigned bool
	seats    int64
}

func (l *latest) newer(ms int64, eid []byte) bool {
	if ms != l.ms {
		return ms > l.ms
	}
	return bytes.Compare(eid, l.eventID) > 0
}

func (l *latest) set(month int32, ev *event.Event) {
	l.month, l.ms, l.assigned, l.seats = month, ev.OccurredAtMs, ev.Type == event.SeatAssigned, ev.Seats
	l.eventID = append(l.eventID[:0], ev.EventID...)
}

// monthMs is a user's activity in one month, read from one partition:
// latest login/feature_used and the logins not yet folded into counts.
type monthMs struct {
	month  int32
	part   int32
	ms     int64
	logins uint32
}

// featMonth is a feature a user used in a month, read from one partition,
// with the events not yet folded into counts.
type featMonth struct {
	feat  *feature
	month int32
	part  int32
	n     uint32
}

type feature struct{ name string }

// user is one user of one account, with what it did since the last Drain.
type user struct {
	acct     *account
	name     string
	dirty    bool
	activity []monthMs   // latest activity per month
	features []featMonth // features used per month
	seats    []latest    // latest seat event per month
}

type countKey struct {
	part  int32
	month int32
	feat  *feature // nil for logins
}

type count struct {
	n     uint64
	dirty bool
}

// account is one account's state.
type account struct {
	name       string
	id         uint64
	dirty      bool
	dirtyUsers []*user
	purchases  []latest // latest purchase per month since the last Drain
	months     []int32  // months with an event since the last Drain
	counts     map[countKey]*count
	dirtyCount []countKey
	inParts    []int32 // partitions whose bucket lists this account
}

// partition is the count bucket state of one owned partition.
type partition struct {
	bucket   int64 // bucket number (offset / BucketSize) being counted
	next     int64 // offset after the last record seen
	started  bool
	accounts []*account // accounts with counts in this bucket
}

// Aggregator accumulates facts since the last Drain.
type Aggregator struct {
	topic    string
	accounts map[string]*account
	users    map[[2]uint64]*user // by a 128-bit hash of (account, user): one lookup, no string compare
	seeds    [2]maphash.Seed
	features map[string]*feature
	dirty    []*account
	parts    map[int32]*partition
	closed   []schema.EventCount // counts of buckets finished since the last Drain
	freeCnt  []*count
	pending  int // fact rows the next Drain will write (approximately)
}

// New returns an empty Aggregator for events of topic.
func New(topic string) *Aggregator {
	return &Aggregator{
		topic:    topic,
		accounts: make(map[string]*account),
		users:    make(map[[2]uint64]*user),
		seeds:    [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		features: make(map[string]*feature),
		parts:    make(map[int32]*partition),
	}
}

// Assign starts counting partition p afresh. The first record added for p
// must be at a bucket start (BucketStart of the committed offset), so that
// every count written covers its bucket from its first offset.
func (a *Aggregator) Assign(p int32) {
	if old := a.parts[p]; old != nil {
		a.forget(p, old)
	}
	a.parts[p] = &partition{}
}

// Drop forgets partition p's counts (on revoke after a flush, or on loss).
// Other facts already gathered stay: they are true facts about events and
// harmless to write whoever owns p now.
func (a *Aggregator) Drop(p int32) {
	if part := a.parts[p]; part != nil {
		a.forget(p, part)
		delete(a.parts, p)
	}
}

// forget deletes partition p's counts from its accounts, unwritten, and the
// counts of p its users hold unfolded: a count is written only as a prefix
// of its bucket counted from the bucket's first offset, which a new
// assignment recomputes.
func (a *Aggregator) forget(p int32, part *partition) {
	for _, acc := range a.dirty {
		for _, u := range acc.dirtyUsers {
			for i := range u.activity {
				if u.activity[i].part == p {
					u.activity[i].logins = 0
				}
			}
			for i := range u.features {
				if u.features[i].part == p {
					u.features[i].n = 0
				}
			}
		}
	}
	for _, acc := range part.accounts {
		for k, c := range acc.counts {
			if k.part == p {
				delete(acc.counts, k)
				a.freeCnt = append(a.freeCnt, c)
			}
		}
		keep := acc.dirtyCount[:0]
		for _, k := range acc.dirtyCount {
			if k.part != p {
				keep = append(keep, k)
			}
		}
		acc.dirtyCount = keep
		parts := acc.inParts[:0]
		for _, x := range acc.inParts {
			if x != p {
				parts = append(parts, x)
			}
		}
		acc.inParts = parts
	}
	part.accounts = nil
}

func (a *Aggregator) account(name []byte) *account {
	if acc, ok := a.accounts[string(name)]; ok { // no allocation
		return acc
	}
	acc := &account{name: string(name), id: uint64(len(a.accounts)) + 1, counts: make(map[countKey]*count)}
	a.accounts[acc.name] = acc
	return acc
}

// user finds or creates a user of acc. Users are keyed by two independently
// seeded 64-bit hashes of the name, mixed with the account: two names are
// taken for one only on a 128-bit collision (as in ingest/dedup).
func (a *Aggregator) user(acc *account, name []byte) *user {
	k := [2]uint64{maphash.Bytes(a.seeds[0], name) ^ acc.id*0x9e3779b97f4a7c15, maphash.Bytes(a.seeds[1], name) + acc.id}
	u, ok := a.users[k]
	if !ok {
		u = &user{acct: acc, name: string(name)}
		a.users[k] = u
	}
	if !u.dirty {
		u.dirty = true
		acc.dirtyUsers = append(acc.dirtyUsers, u)
	}
	return u
}

func (a *Aggregator) feature(name []byte) *feature {
	f, ok := a.features[string(name)]
	if !ok {
		f = &feature{name: string(name)}
		a.features[f.name] = f
	}
	return f
}

// Add aggregates one accepted, non-duplicate event read at offset of
// partition p. ev's slices are not retained.
func (a *Aggregator) Add(p int32, offset int64, ev *event.Event) {
	part := a.parts[p]
	if part == nil {
		a.Assign(p)
		part = a.parts[p]
	}
	a.advance(p, part, offset)

	acc := a.account(ev.AccountID)
	if !acc.dirty {
		acc.dirty = true
		a.dirty = append(a.dirty, acc)
	}
	month := quarter.MonthIndex(ev.OccurredAtMs)
	if n := len(acc.months); n == 0 || acc.months[n-1] != month {
		a.pending += addMonth(&acc.months, month)
	}
	switch ev.Type {
	case event.Login, event.FeatureUsed:
		// Counts are kept on the user (already in cache) and folded into
		// the account's bucket counts at Drain, one account at a time.
		u := a.user(acc, ev.UserID)
		a.pending++ // counts are bounded by events, not keys: flush early on volume too
		if ev.Type == event.Login {
			u.activity = addActivity(u.activity, month, p, ev.OccurredAtMs, 1)
		} else {
			u.activity = addActivity(u.activity, month, p, ev.OccurredAtMs, 0)
			u.features = addFeature(u.features, a.feature(ev.Feature), month, p)
		}
	case event.SeatAssigned, event.SeatUnassigned:
		a.pending++
		u := a.user(acc, ev.UserID)
		u.seats = addLatest(u.seats, month, ev)
	case event.SeatsPurchased:
		a.pending++
		acc.purchases = addLatest(acc.purchases, month, ev)
	}
}

// listedIn reports whether acc is in partition p's list of accounts with
// counts in the current bucket.
func (acc *account) listedIn(p int32) bool {
	for _, x := range acc.inParts {
		if x == p {
			return true
		}
	}
	return false
}

func (a *Aggregator) newCount() *count {
	if n := len(a.freeCnt); n > 0 {
		c := a.freeCnt[n-1]
		a.freeCnt = a.freeCnt[:n-1]
		*c = count{}
		return c
	}
	return &count{}
}

func addMonth(ms *[]int32, m int32) int {
	for _, x := range *ms {
		if x == m {
			return 0
		}
	}
	*ms = append(*ms, m)
	return 1
}

func addActivity(s []monthMs, month, part int32, ms int64, logins uint32) []monthMs {
	for i := range s {
		if s[i].month == month && s[i].part == part {
			s[i].ms = max(s[i].ms, ms)
			s[i].logins += logins
			return s
		}
	}
	return append(s, monthMs{month: month, part: part, ms: ms, logins: logins})
}

func addFeature(s []featMonth, f *feature, month, part int32) []featMonth {
	for i := range s {
		if s[i].feat == f && s[i].month == month && s[i].part == part {
			s[i].n++
			return s
		}
	}
	return append(s, featMonth{feat: f, month: month, part: part, n: 1})
}

// fold moves u's unfolded event counts of partition p (every partition when
// p < 0) into acc's bucket counts.
func (a *Aggregator) fold(acc *account, u *user, p int32) {
	for i := range u.activity {
		x := &u.activity[i]
		if x.logins > 0 && (p < 0 || x.part == p) {
			a.count(acc, countKey{part: x.part, month: x.month}, x.logins)
			x.logins = 0
		}
	}
	for i := range u.features {
		x := &u.features[i]
		if x.n > 0 && (p < 0 || x.part == p) {
			a.count(acc, countKey{part: x.part, month: x.month, feat: x.feat}, x.n)
			x.n = 0
		}
	}
}

func (a *Aggregator) count(acc *account, k countKey, n uint32) {
	if a.parts[k.part] == nil {
		return // not owned (forget already cleared it; kept as a guard)
	}
	c := acc.counts[k]
	if c == nil {
		c = a.newCount()
		acc.counts[k] = c
		if !acc.listedIn(k.part) {
			acc.inParts = append(acc.inParts, k.part)
			if part := a.parts[k.part]; part != nil {
				part.accounts = append(part.accounts, acc)
			}
		}
	}
	c.n += uint64(n)
	if !c.dirty {
		c.dirty = true
		acc.dirtyCount = append(acc.dirtyCount, k)
	}
}

func addLatest(s []latest, month int32, ev *event.Event) []latest {
	for i := range s {
		if s[i].month == month {
			if s[i].newer(ev.OccurredAtMs, ev.EventID) {
				s[i].set(month, ev)
			}
			return s
		}
	}
	if len(s) < cap(s) { // reuse the event_id buffer of a drained entry
		s = s[:len(s)+1]
	} else {
		s = append(s, latest{})
	}
	s[len(s)-1].set(month, ev)
	return s
}

// Skip notes that offset of partition p was read but adds nothing (a
// rejected record or a duplicate), so that counts cover it.
func (a *Aggregator) Skip(p int32, offset int64) {
	part := a.parts[p]
	if part == nil {
		a.Assign(p)
		part = a.parts[p]
	}
	a.advance(p, part, offset)
}

// advance moves partition p to offset, closing the current bucket when
// offset is past it.
func (a *Aggregator) advance(p int32, part *partition, offset int64) {
	b := offset / schema.BucketSize
	if !part.started {
		part.started, part.bucket = true, b
	} else if b != part.bucket {
		a.closeBucket(p, part)
		part.bucket = b
	}
	part.next = offset + 1
}

// closeBucket moves the dirty counts of part's bucket to a.closed and
// forgets the bucket's counts.
func (a *Aggregator) closeBucket(p int32, part *partition) {
	for _, acc := range a.dirty {
		for _, u := range acc.dirtyUsers {
			a.fold(acc, u, p)
		}
	}
	end := min(part.next, (part.bucket+1)*schema.BucketSize)
	for _, acc := range part.accounts {
		a.closed = a.appendCounts(a.closed, acc, p, part.bucket, end)
	}
	a.forget(p, part)
}

// appendCounts appends acc's dirty counts of partition p (all partitions
// when p < 0) and marks them clean.
func (a *Aggregator) appendCounts(dst []schema.EventCount, acc *account, p int32, bucket, end int64) []schema.EventCount {
	keep := acc.dirtyCount[:0]
	for _, k := range acc.dirtyCount {
		if p >= 0 && k.part != p {
			keep = append(keep, k)
			continue
		}
		c := acc.counts[k]
		kind, feat := schema.KindLogin, ""
		if k.feat != nil {
			kind, feat = schema.KindFeatureUsed, k.feat.name
		}
		cb, ce := bucket, end
		if p < 0 {
			part := a.parts[k.part]
			if part == nil {
				continue // dropped partition: its counts are not ours to write
			}
			cb, ce = part.bucket, part.next
		}
		dst = append(dst, schema.EventCount{
			Account: acc.name, Month: k.month, Kind: kind, Feature: feat,
			Topic: a.topic, Partition: k.part, Bucket: uint64(cb), CoveredEnd: uint64(ce), Events: c.n,
		})
		c.dirty = false
	}
	acc.dirtyCount = keep
	return dst
}

// Drain resets f and moves every fact gathered since the last Drain into
// it (see DrainAppend).
func (a *Aggregator) Drain(f *schema.Facts) {
	f.Reset()
	a.DrainAppend(f)
}

// DrainAppend appends every fact gathered since the last Drain to f and
// empties the Aggregator's pending state. Counts of open
// buckets are written with covered_end = the next offset of their partition
// and stay open. Row order is unspecified: no stored value depends on it.
func (a *Aggregator) DrainAppend(f *schema.Facts) {
	f.EventCounts = append(f.EventCounts, a.closed...)
	a.closed = a.closed[:0]
	for _, acc := range a.dirty {
		acc.dirty = false
		for _, m := range acc.months {
			f.AccountMonths = append(f.AccountMonths, schema.AccountMonth{Account: acc.name, Month: m})
		}
		acc.months = acc.months[:0]
		for _, l := range acc.purchases {
			f.SeatPurchases = append(f.SeatPurchases, schema.SeatPurchase{Account: acc.name, Month: l.month, OccurredMs: l.ms, EventID: string(l.eventID), Seats: l.seats})
		}
		acc.purchases = acc.purchases[:0]
		for _, u := range acc.dirtyUsers {
			a.fold(acc, u, -1)
		}
		for _, u := range acc.dirtyUsers {
			u.dirty = false
			for _, x := range u.activity {
				f.UserActivity = append(f.UserActivity, schema.UserActivity{Account: acc.name, User: u.name, Month: x.month, LastMs: x.ms})
			}
			for _, x := range u.features {
				f.FeatureUsers = append(f.FeatureUsers, schema.FeatureUser{Account: acc.name, Feature: x.feat.name, User: u.name, Month: x.month})
			}
			for _, l := range u.seats {
				f.SeatEvents = append(f.SeatEvents, schema.SeatEvent{Account: acc.name, User: u.name, Month: l.month, OccurredMs: l.ms, EventID: string(l.eventID), Assigned: l.assigned})
			}
			u.activity, u.features, u.seats = u.activity[:0], u.features[:0], u.seats[:0]
		}
		acc.dirtyUsers = acc.dirtyUsers[:0]
		f.EventCounts = a.appendCounts(f.EventCounts, acc, -1, 0, 0)
	}
	a.dirty = a.dirty[:0]
	a.pending = 0
}

// Pending approximates the fact rows waiting for the next Drain: a flush
// trigger and a memory bound. It grows by at most one per event.
func (a *Aggregator) Pending() int { return a.pending }

// Names is the number of distinct accounts and users held in memory.
func (a *Aggregator) Names() int { return len(a.accounts) + len(a.users) }
