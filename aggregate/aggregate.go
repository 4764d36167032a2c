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
// An Aggregator is owned by one goroutine (the consumer loop) and is not
// safe for concurrent use. It exports no metrics.
package aggregate

import (
	"bytes"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// BucketStart returns the first offset of the count bucket holding offset.
func BucketStart(offset int64) int64 { return offset - offset%schema.BucketSize }

// id is an interned string.
type id uint32

// strings interns account, user and feature names so that the per-event
// maps use small fixed-size keys and the hot path does not allocate once a
// name has been seen.
type interner struct {
	ids  map[string]id
	strs []string
}

func (t *interner) get(b []byte) id {
	if v, ok := t.ids[string(b)]; ok { // no allocation: compiler-optimised lookup
		return v
	}
	s := string(b)
	v := id(len(t.strs))
	t.ids[s] = v
	t.strs = append(t.strs, s)
	return v
}

type userMonth struct {
	acct, user id
	month      int32
}

type featureUser struct {
	acct, feat, user id
	month            int32
}

type acctMonth struct {
	acct  id
	month int32
}

type countKey struct {
	acct  id
	feat  id // noFeature for logins
	month int32
	kind  uint8
}

const noFeature = ^id(0)

type latest struct {
	ms       int64
	eventID  string
	assigned bool
	seats    int64
}

// newer reports whether (ms, eid) is later than l under the contract's tie
// rule (greater occurred_at, then greater event_id).
func (l *latest) newer(ms int64, eid []byte) bool {
	if ms != l.ms {
		return ms > l.ms
	}
	return bytes.Compare(eid, []byte(l.eventID)) > 0
}

type countVal struct {
	n     uint64
	dirty bool
}

// partition is the count state of one owned partition: the counts of its
// current bucket since the bucket's first offset.
type partition struct {
	bucket  int64 // bucket number (offset / BucketSize) of counts
	next    int64 // offset after the last record added
	started bool
	counts  map[countKey]countVal
	dirty   []countKey
}

// Aggregator accumulates facts since the last Drain.
type Aggregator struct {
	topic string
	names interner

	activity     map[userMonth]int64
	featureUsers map[featureUser]struct{}
	seats        map[userMonth]latest
	purchases    map[acctMonth]latest
	parts        map[int32]*partition
	closed       []schema.EventCount // counts of buckets finished since the last Drain
}

// New returns an empty Aggregator for events of topic.
func New(topic string) *Aggregator {
	return &Aggregator{
		topic:        topic,
		names:        interner{ids: make(map[string]id)},
		activity:     make(map[userMonth]int64),
		featureUsers: make(map[featureUser]struct{}),
		seats:        make(map[userMonth]latest),
		purchases:    make(map[acctMonth]latest),
		parts:        make(map[int32]*partition),
	}
}

// Assign starts counting partition p afresh. The first record added for p
// must be at a bucket start (BucketStart of the committed offset), so that
// every count written covers its bucket from its first offset.
func (a *Aggregator) Assign(p int32) {
	a.parts[p] = &partition{counts: make(map[countKey]countVal)}
}

// Drop forgets partition p's counts (on revoke after a flush, or on loss).
// Facts already merged into the shared maps stay: they are true facts about
// events and harmless to write whoever owns p now.
func (a *Aggregator) Drop(p int32) { delete(a.parts, p) }

// Add aggregates one accepted, non-duplicate event read at offset of
// partition p. ev's slices are not retained.
func (a *Aggregator) Add(p int32, offset int64, ev *event.Event) {
	part := a.parts[p]
	if part == nil {
		a.Assign(p)
		part = a.parts[p]
	}
	a.advance(p, part, offset)

	acct := a.names.get(ev.AccountID)
	month := quarter.MonthIndex(ev.OccurredAtMs)
	switch ev.Type {
	case event.Login, event.FeatureUsed:
		user := a.names.get(ev.UserID)
		k := userMonth{acct, user, month}
		if last, ok := a.activity[k]; !ok || ev.OccurredAtMs > last {
			a.activity[k] = ev.OccurredAtMs
		}
		ck := countKey{acct: acct, feat: noFeature, month: month, kind: schema.KindLogin}
		if ev.Type == event.FeatureUsed {
			feat := a.names.get(ev.Feature)
			a.featureUsers[featureUser{acct, feat, user, month}] = struct{}{}
			ck = countKey{acct: acct, feat: feat, month: month, kind: schema.KindFeatureUsed}
		}
		v := part.counts[ck]
		v.n++
		if !v.dirty {
			v.dirty = true
			part.dirty = append(part.dirty, ck)
		}
		part.counts[ck] = v
	case event.SeatAssigned, event.SeatUnassigned:
		k := userMonth{acct, a.names.get(ev.UserID), month}
		if l, ok := a.seats[k]; !ok || l.newer(ev.OccurredAtMs, ev.EventID) {
			a.seats[k] = latest{ms: ev.OccurredAtMs, eventID: string(ev.EventID), assigned: ev.Type == event.SeatAssigned}
		}
	case event.SeatsPurchased:
		k := acctMonth{acct, month}
		if l, ok := a.purchases[k]; !ok || l.newer(ev.OccurredAtMs, ev.EventID) {
			a.purchases[k] = latest{ms: ev.OccurredAtMs, eventID: string(ev.EventID), seats: ev.Seats}
		}
	}
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
		clear(part.counts)
		part.bucket = b
	}
	part.next = offset + 1
}

// closeBucket moves the dirty counts of part's bucket to a.closed.
func (a *Aggregator) closeBucket(p int32, part *partition) {
	end := min(part.next, (part.bucket+1)*schema.BucketSize)
	a.closed = a.appendCounts(a.closed, p, part, end)
}

func (a *Aggregator) appendCounts(dst []schema.EventCount, p int32, part *partition, end int64) []schema.EventCount {
	for _, k := range part.dirty {
		v := part.counts[k]
		feat := ""
		if k.feat != noFeature {
			feat = a.names.strs[k.feat]
		}
		dst = append(dst, schema.EventCount{
			Account: a.names.strs[k.acct], Month: k.month, Kind: k.kind, Feature: feat,
			Topic: a.topic, Partition: p, Bucket: uint64(part.bucket), CoveredEnd: uint64(end), Events: v.n,
		})
		v.dirty = false
		part.counts[k] = v
	}
	part.dirty = part.dirty[:0]
	return dst
}

// Drain moves every fact gathered since the last Drain into f (which it
// resets first) and empties the Aggregator's pending state. Counts of open
// buckets are written with covered_end = the next offset of their partition
// and stay open. Row order is unspecified: no stored value depends on it.
func (a *Aggregator) Drain(f *schema.Facts) {
	f.Reset()
	months := make(map[acctMonth]struct{})
	for k, ms := range a.activity {
		f.UserActivity = append(f.UserActivity, schema.UserActivity{Account: a.names.strs[k.acct], User: a.names.strs[k.user], Month: k.month, LastMs: ms})
		months[acctMonth{k.acct, k.month}] = struct{}{}
	}
	for k := range a.featureUsers {
		f.FeatureUsers = append(f.FeatureUsers, schema.FeatureUser{Account: a.names.strs[k.acct], Feature: a.names.strs[k.feat], User: a.names.strs[k.user], Month: k.month})
	}
	for k, l := range a.seats {
		f.SeatEvents = append(f.SeatEvents, schema.SeatEvent{Account: a.names.strs[k.acct], User: a.names.strs[k.user], Month: k.month, OccurredMs: l.ms, EventID: l.eventID, Assigned: l.assigned})
		months[acctMonth{k.acct, k.month}] = struct{}{}
	}
	for k, l := range a.purchases {
		f.SeatPurchases = append(f.SeatPurchases, schema.SeatPurchase{Account: a.names.strs[k.acct], Month: k.month, OccurredMs: l.ms, EventID: l.eventID, Seats: l.seats})
		months[acctMonth{k.acct, k.month}] = struct{}{}
	}
	for k := range months {
		f.AccountMonths = append(f.AccountMonths, schema.AccountMonth{Account: a.names.strs[k.acct], Month: k.month})
	}
	f.EventCounts = append(f.EventCounts, a.closed...)
	a.closed = a.closed[:0]
	for p, part := range a.parts {
		if part.started {
			f.EventCounts = a.appendCounts(f.EventCounts, p, part, part.next)
		}
	}
	clear(a.activity)
	clear(a.featureUsers)
	clear(a.seats)
	clear(a.purchases)
}

// Pending reports how many fact keys wait for the next Drain (a flush
// trigger and a memory bound).
func (a *Aggregator) Pending() int {
	n := len(a.activity) + len(a.featureUsers) + len(a.seats) + len(a.purchases) + len(a.closed)
	for _, p := range a.parts {
		n += len(p.dirty)
	}
	return n
}

// Names is the number of distinct interned names (accounts, users,
// features) held in memory.
func (a *Aggregator) Names() int { return len(a.names.strs) }
