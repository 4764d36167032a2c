// Package aggregate turns accepted, non-duplicate events into the facts one
// flush writes to ClickHouse (schema.Facts). It keeps only what changed
// since the last flush — the served rollups are recomputed from all facts
// ever written (see package schema and ingest's serve loop) — plus, per
// owned partition, the event counts of the current offset bucket.
//
// Why this is exact under crashes, replays and zombie writers: every fact is
// either a set member (account-month, feature user), a maximum (latest
// activity, latest seat event, latest purchase), or a count that is a pure
// function of a fixed offset range of one partition ([bucket start,
// covered end)), stored with covered_end as its ReplacingMergeTree version.
// Writing any of them twice, or writing a count computed from more of the
// same offsets, cannot change what a recompute computes. A new owner of a
// partition does not recount the open bucket from Kafka (retention may have
// deleted its start): it restores the bucket's stored counts (Restore) and
// goes on from the durable position, skipping, per count key, the events
// already inside the stored value (see docs/design.md).
//
// Layout: the hot path does no random lookups beyond the account. Each
// login, feature_used and seat event is appended to its account's log
// (acts, 40 bytes, plus the user name and seat event_id in the account's
// byte buffer); Drain sorts each account's small log by user name and
// month and turns the runs into facts. There is no map of users: between
// flushes the Aggregator keeps only accounts, feature names and the open
// buckets' counts, and the hot path does not allocate once an account's
// log has grown to its usual size.
//
// Row order: DrainAll emits accounts in name order and each table's rows in
// its ClickHouse ORDER BY order. Nothing stored depends on it, but
// ClickHouse inserts a block that is already in key order without sorting
// it (in the benchmark ClickHouse's CPU per event fell by ~40%).
//
// An Aggregator is not safe for concurrent use: the consumer uses each
// from one goroutine at a time (a poll's worker, or the Kafka client's
// goroutine for Restore and Drop at a rebalance, serialised by the
// consumer's mutex and its wait for the workers); DrainAll takes several
// (one per worker) at once. It exports no metrics.
package aggregate

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"unsafe"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/ingest/prefetch"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// BucketStart returns the first offset of the count bucket holding offset.
func BucketStart(offset int64) int64 { return offset - offset%schema.BucketSize }

// latest is the latest seats_purchased of an account in a month under the
// contract's tie rule (greater occurred_at, then greater event_id).
type latest struct {
	month   int32
	ms      int64
	eventID []byte // owned copy, reused across flushes
	seats   int64
}

func (l *latest) newer(ms int64, eid []byte) bool {
	if ms != l.ms {
		return ms > l.ms
	}
	return bytes.Compare(eid, l.eventID) > 0
}

func (l *latest) set(month int32, ev *event.Event) {
	l.month, l.ms, l.seats = month, ev.OccurredAtMs, ev.Seats
	l.eventID = append(l.eventID[:0], ev.EventID...)
}

// Kinds of act.
const (
	actActivity uint8 = iota // login (feat featLogin) or feature_used
	actSeat                  // seat_assigned or seat_unassigned
)

const featLogin = -1

// Flags of act.
const (
	flagCounted  uint8 = 1 << iota // folded into counts, or not ours to count
	flagAssigned                   // seat_assigned (else seat_unassigned)
)

// act is one login, feature_used or seat event of an account since the last
// Drain. The user name is buf[name:name+nlen] of the account; a seat
// event's event_id follows it (elen bytes).
type act struct {
	nkey  uint64 // set by sortActs: 6 bytes of the user name (see sortActs)
	ms    int64
	month int32
	part  int32
	feat  int32 // feature index; featLogin for a login
	name  uint32
	nlen  uint16
	elen  uint16
	kind  uint8
	flags uint8
}

// count is an account's number of events of one (partition, month,
// feature) in the partition's current bucket, under a packed key that
// sorts in that order (countKey).
type count struct {
	key   uint64
	n     uint64
	dirty bool // changed since it was last written
}

// MaxPartitions bounds the partition numbers an Aggregator counts: a count's
// key packs the partition into 21 bits (KRaft's 2M partitions per cluster).
const MaxPartitions = 1 << 21

// countKey packs (partition, month, feature) into a key that sorts in that
// order: 21 bits of partition, 11 of month since schema.MinMonth (2000-01 to
// 2105-01 needs 1261 values), 32 of feature index + 1.
func countKey(part, month, feat int32) uint64 {
	return uint64(part)<<43 | uint64(month-schema.MinMonth)<<32 | uint64(uint32(feat+1))
}

func (c *count) part() int32  { return int32(c.key >> 43) }
func (c *count) month() int32 { return int32(c.key>>32&0x7ff) + schema.MinMonth }
func (c *count) feat() int32  { return int32(uint32(c.key)) - 1 }

// account is one account's state. The fields Add touches come first, so
// that they share as few cache lines as possible.
type account struct {
	dirty     bool
	agg       *Aggregator // owner
	months    []int32     // months with an event since the last Drain
	acts      []act       // since the last Drain
	buf       []byte      // user names and event_ids of acts
	name      string
	purchases []latest // latest purchase per month since the last Drain
	counts    []count  // sorted by (part, month, feat)
	parts     []int32  // partitions whose bucket lists this account
}

// partition is the count bucket state of one owned partition.
type partition struct {
	topic    string // src_topic of its counts (schema.IncarnationKey)
	bucket   int64  // bucket number (offset / BucketSize) being counted
	next     int64  // offset after the last record seen
	started  bool
	accounts []*account // accounts with counts in this bucket
	// resume holds, for restored counts whose stored row covers offsets
	// beyond the restore position, that row's covered_end: an event of the
	// count below it is already counted. resumeUntil is their greatest
	// covered_end; past it no event is looked up.
	resume      map[resumeKey]int64
	resumeUntil int64
	later       map[int64][]schema.EventCount // stored counts of later buckets, by bucket (Restore)
}

// resumeKey names one count of one account.
type resumeKey struct {
	acc *account
	key uint64
}

// Aggregator accumulates facts since the last Drain.
type Aggregator struct {
	topic     string
	accounts  map[string]*account
	features  map[string]int32
	featName  []string
	dirty     []*account
	parts     map[int32]*partition
	closed    []schema.EventCount // counts of buckets finished since the last Drain
	adds      []uint64            // count keys to add to one account's, one per event (mergeCounts)
	merged    []count             // mergeCounts' scratch
	pending   int                 // fact rows the next Drain will write (approximately)
	keys      []uint64            // sortActs' scratch
	drainAccs []*account          // DrainAll's scratch
	featRank  []int32             // featureRanks' result
	counting  []int32             // ordered's scratch
	uaScratch []schema.UserActivity
	fuScratch []schema.FeatureUser
	ecScratch []schema.EventCount
	fuSub     []int32 // feature rank of each FeatureUsers row of the account being drained
	ecSub     []int32 // the same for its EventCounts rows (0 for logins)
	sorted    []act   // sortActs' scratch
}

// New returns an empty Aggregator for events of topic.
func New(topic string) *Aggregator {
	return &Aggregator{
		topic:    topic,
		accounts: make(map[string]*account),
		features: make(map[string]int32),
		parts:    make(map[int32]*partition),
	}
}

// Assign starts counting partition p afresh, its counts stored under the
// Aggregator's topic. The first record added for p must be at a bucket
// start, so that every count written covers its bucket from its first
// offset; a partition that resumes mid-bucket uses Restore instead.
func (a *Aggregator) Assign(p int32) {
	if p < 0 || p >= MaxPartitions {
		panic(fmt.Sprintf("aggregate: partition %d outside [0, %d)", p, MaxPartitions))
	}
	if old := a.parts[p]; old != nil {
		a.forget(p, old)
	}
	a.parts[p] = &partition{topic: a.topic}
}

// Restore starts counting partition p at offset from, with counts stored
// under srcTopic, from the stored counts: rows holds, per count key of
// from's bucket and of any later bucket, the stored row with the greatest
// covered_end (rows of other partitions and earlier buckets are ignored).
// A key's events at offsets below its row's covered_end are already in the
// row and are not counted again; the counts written afterwards are again
// those of [bucket start, covered_end). Rows of a later bucket (a flush
// that crossed into it and died before its progress was stored) are loaded
// when counting enters that bucket, so that a log start moved past its
// first offsets by retention does not shrink them.
func (a *Aggregator) Restore(p int32, srcTopic string, from int64, rows []schema.EventCount) {
	a.Assign(p)
	part := a.parts[p]
	part.topic = srcTopic
	part.started, part.bucket, part.next = true, from/schema.BucketSize, from
	var now []schema.EventCount
	for _, r := range rows {
		switch b := int64(r.Bucket); {
		case r.Partition != p || b < part.bucket:
		case b == part.bucket:
			now = append(now, r)
		default:
			if part.later == nil {
				part.later = map[int64][]schema.EventCount{}
			}
			part.later[b] = append(part.later[b], r)
		}
	}
	a.load(p, part, from, now)
}

// load adds stored counts of part's current bucket (see Restore).
func (a *Aggregator) load(p int32, part *partition, from int64, rows []schema.EventCount) {
	for i := range rows {
		r := &rows[i]
		if r.Events == 0 {
			continue
		}
		feat := int32(featLogin)
		if r.Kind == schema.KindFeatureUsed {
			feat = a.feature([]byte(r.Feature))
		}
		key := countKey(p, r.Month, feat)
		acc := a.account([]byte(r.Account))
		if ce := int64(r.CoveredEnd); ce > from {
			if part.resume == nil {
				part.resume = map[resumeKey]int64{}
			}
			part.resume[resumeKey{acc, key}] = ce
			part.resumeUntil = max(part.resumeUntil, ce)
		}
		i, found := slices.BinarySearchFunc(acc.counts, key, func(c count, k uint64) int { return cmp.Compare(c.key, k) })
		if found {
			acc.counts[i].n = r.Events // one row per key; a repeat replaces
			continue
		}
		acc.counts = slices.Insert(acc.counts, i, count{key: key, n: r.Events})
		if !slices.Contains(acc.parts, p) {
			acc.parts = append(acc.parts, p)
			part.accounts = append(part.accounts, acc)
		}
	}
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

// forget deletes partition p's counts from its accounts, unwritten, and
// marks p's events not yet counted as never to be counted: a count is
// written only as a prefix of its bucket counted from the bucket's first
// offset, which a new assignment recomputes.
func (a *Aggregator) forget(p int32, part *partition) {
	for _, acc := range a.dirty {
		for i := range acc.acts {
			if x := &acc.acts[i]; x.part == p {
				x.flags |= flagCounted
			}
		}
	}
	for _, acc := range part.accounts {
		keep := acc.counts[:0]
		for _, c := range acc.counts {
			if c.part() != p {
				keep = append(keep, c)
			}
		}
		acc.counts = keep
		parts := acc.parts[:0]
		for _, x := range acc.parts {
			if x != p {
				parts = append(parts, x)
			}
		}
		acc.parts = parts
	}
	part.accounts = nil
}

func (a *Aggregator) account(name []byte) *account {
	if acc, ok := a.accounts[string(name)]; ok { // no allocation
		return acc
	}
	acc := &account{name: string(name), agg: a}
	a.accounts[acc.name] = acc
	return acc
}

func (a *Aggregator) feature(name []byte) int32 {
	f, ok := a.features[string(name)]
	if !ok {
		f = int32(len(a.featName))
		a.featName = append(a.featName, string(name))
		a.features[a.featName[f]] = f
	}
	return f
}

// Prefetch starts loading the state of accountID's account into the CPU
// cache, for an Add of that account soon after (see ingest's one-record
// lookahead). It changes nothing.
func (a *Aggregator) Prefetch(accountID []byte) {
	acc, ok := a.accounts[string(accountID)]
	if !ok {
		return
	}
	prefetch.Addr(unsafe.Pointer(acc))
	prefetch.Addr(unsafe.Add(unsafe.Pointer(acc), 64))
	if n := len(acc.acts); n < cap(acc.acts) {
		prefetch.Addr(unsafe.Pointer(unsafe.SliceData(acc.acts[n:])))
	}
	if n := len(acc.buf); n < cap(acc.buf) {
		prefetch.Addr(unsafe.Pointer(unsafe.SliceData(acc.buf[n:])))
	}
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
	var counted uint8 // flagCounted: the event is inside a restored count
	if offset < part.resumeUntil {
		counted = part.restored(acc, countKey(p, quarter.MonthIndex(ev.OccurredAtMs), a.featureOf(ev)), offset)
	}
	if !acc.dirty {
		acc.dirty = true
		a.dirty = append(a.dirty, acc)
	}
	month := quarter.MonthIndex(ev.OccurredAtMs)
	if n := len(acc.months); n == 0 || acc.months[n-1] != month {
		a.pending += addMonth(&acc.months, month)
	}
	a.pending++ // rows are bounded by events: flush early on volume too
	switch ev.Type {
	case event.Login:
		acc.add(ev, act{month: month, part: p, feat: featLogin, kind: actActivity, flags: counted}, false)
	case event.FeatureUsed:
		acc.add(ev, act{month: month, part: p, feat: a.feature(ev.Feature), kind: actActivity, flags: counted}, false)
	case event.SeatAssigned:
		acc.add(ev, act{month: month, part: p, kind: actSeat, flags: flagCounted | flagAssigned}, true)
	case event.SeatUnassigned:
		acc.add(ev, act{month: month, part: p, kind: actSeat, flags: flagCounted}, true)
	case event.SeatsPurchased:
		acc.purchases = addLatest(acc.purchases, month, ev)
	}
}

// featureOf is the count feature index of a login or feature_used event.
func (a *Aggregator) featureOf(ev *event.Event) int32 {
	if ev.Type == event.FeatureUsed {
		return a.feature(ev.Feature)
	}
	return featLogin
}

// restored reports flagCounted if the event of acc's count key at offset
// is already inside a restored count (Restore), else 0.
func (part *partition) restored(acc *account, key uint64, offset int64) uint8 {
	if end, ok := part.resume[resumeKey{acc, key}]; ok && offset < end {
		return flagCounted
	}
	return 0
}

// add appends x, for ev's user (and event_id if withID), to acc's log.
func (acc *account) add(ev *event.Event, x act, withID bool) {
	x.ms = ev.OccurredAtMs
	x.name, x.nlen = uint32(len(acc.buf)), uint16(len(ev.UserID))
	acc.buf = append(acc.buf, ev.UserID...)
	if withID {
		x.elen = uint16(len(ev.EventID))
		acc.buf = append(acc.buf, ev.EventID...)
	}
	acc.acts = append(acc.acts, x)
}

func (acc *account) user(x *act) []byte { return acc.buf[x.name : x.name+uint32(x.nlen)] }
func (acc *account) eventID(x *act) []byte {
	s := x.name + uint32(x.nlen)
	return acc.buf[s : s+uint32(x.elen)]
}

// compare orders acts by user name, then kind, month, feature and
// partition.
func (acc *account) compare(x, y act) int {
	if c := bytes.Compare(acc.user(&x), acc.user(&y)); c != 0 {
		return c
	}
	if x.kind != y.kind {
		return cmp.Compare(x.kind, y.kind)
	}
	if x.month != y.month {
		return cmp.Compare(x.month, y.month)
	}
	if x.feat != y.feat {
		return cmp.Compare(x.feat, y.feat)
	}
	return cmp.Compare(x.part, y.part)
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

// fold moves acc's events of partition p not yet counted into acc's bucket
// counts.
func (a *Aggregator) fold(acc *account, p int32) {
	for i := range acc.acts {
		if x := &acc.acts[i]; x.part == p && x.flags&flagCounted == 0 {
			a.adds = append(a.adds, countKey(p, x.month, x.feat))
			x.flags |= flagCounted
		}
	}
	a.mergeCounts(acc)
}

// mergeCounts adds a.adds to acc's counts (marking them dirty) and empties
// a.adds. Both are sorted and merged: an account's counts are a short
// slice, read in order, not a map probed at random.
func (a *Aggregator) mergeCounts(acc *account) {
	adds := a.adds
	if len(adds) == 0 {
		return
	}
	slices.Sort(adds)
	out := a.merged[:0]
	old := acc.counts
	for i := 0; i < len(adds); {
		add := count{key: adds[i], dirty: true}
		for ; i < len(adds) && adds[i] == add.key; i++ {
			add.n++
		}
		part := a.parts[add.part()]
		if part == nil {
			continue // not owned (forget already marked its events; kept as a guard)
		}
		for len(old) > 0 && old[0].key < add.key {
			out = append(out, old[0])
			old = old[1:]
		}
		if len(old) > 0 && old[0].key == add.key {
			add.n += old[0].n
			old = old[1:]
		} else if p := add.part(); !slices.Contains(acc.parts, p) {
			acc.parts = append(acc.parts, p)
			part.accounts = append(part.accounts, acc)
		}
		out = append(out, add)
	}
	out = append(out, old...)
	acc.counts = append(acc.counts[:0], out...)
	a.merged, a.adds = out[:0], adds[:0]
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
		part.resume, part.resumeUntil = nil, 0
		if rows, ok := part.later[b]; ok {
			delete(part.later, b)
			a.load(p, part, b*schema.BucketSize, rows)
		}
	}
	part.next = offset + 1
}

// closeBucket moves the dirty counts of part's bucket to a.closed and
// forgets the bucket's counts.
func (a *Aggregator) closeBucket(p int32, part *partition) {
	for _, acc := range a.dirty {
		a.fold(acc, p)
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
	for i := range acc.counts {
		c := &acc.counts[i]
		if !c.dirty || p >= 0 && c.part() != p {
			continue
		}
		kind, feat := schema.KindLogin, ""
		if f := c.feat(); f != featLogin {
			kind, feat = schema.KindFeatureUsed, a.featName[f]
		}
		cb, ce := bucket, end
		if p < 0 {
			part := a.parts[c.part()]
			if part == nil {
				continue // dropped partition: its counts are not ours to write
			}
			cb, ce = part.bucket, part.next
			a.ecSub = append(a.ecSub, c.feat()+1) // drainAccount turns it into a rank
		}
		dst = append(dst, schema.EventCount{
			Account: acc.name, Month: c.month(), Kind: kind, Feature: feat,
			Topic: a.parts[c.part()].topic, Partition: c.part(), Bucket: uint64(cb), CoveredEnd: uint64(ce), Events: c.n,
		})
		c.dirty = false
	}
	return dst
}

// Drain resets f and moves every fact gathered since the last Drain into
// it (see DrainAll).
func (a *Aggregator) Drain(f *schema.Facts) {
	f.Reset()
	DrainAll(f, a)
}

// DrainAll appends every fact gathered by aggs since their last Drain to f
// and empties their pending state. Counts of open buckets are written with
// covered_end = the next offset of their partition and stay open.
//
// No stored value depends on row order, but ClickHouse inserts rows that
// arrive in its ORDER BY order several times cheaper (it skips sorting the
// block): accounts are drained in name order across all aggs (each
// account belongs to one), and each account's rows of every table are
// sorted by the rest of the table's key. Only the counts of buckets closed
// since the last Drain (rare) come first, unsorted.
func DrainAll(f *schema.Facts, aggs ...*Aggregator) {
	if len(aggs) == 0 {
		return
	}
	accs := aggs[0].drainAccs[:0]
	for _, a := range aggs {
		f.EventCounts = append(f.EventCounts, a.closed...)
		a.closed = a.closed[:0]
		accs = append(accs, a.dirty...)
	}
	if len(aggs) > 1 || !slices.IsSortedFunc(accs, byName) {
		slices.SortFunc(accs, byName)
	}
	for _, acc := range accs {
		acc.agg.drainAccount(f, acc)
	}
	for _, a := range aggs {
		a.dirty = a.dirty[:0]
		a.pending = 0
	}
	clear(accs)
	aggs[0].drainAccs = accs[:0]
}

func byName(x, y *account) int { return strings.Compare(x.name, y.name) }

// drainAccount appends acc's facts to f, each table's rows in its ORDER BY
// order (the account is the first column of every key).
func (a *Aggregator) drainAccount(f *schema.Facts, acc *account) {
	acc.dirty = false
	slices.Sort(acc.months)
	for _, m := range acc.months {
		f.AccountMonths = append(f.AccountMonths, schema.AccountMonth{Account: acc.name, Month: m})
	}
	acc.months = acc.months[:0]
	slices.SortFunc(acc.purchases, func(x, y latest) int { return cmp.Compare(x.month, y.month) })
	for _, l := range acc.purchases {
		f.SeatPurchases = append(f.SeatPurchases, schema.SeatPurchase{Account: acc.name, Month: l.month, OccurredMs: l.ms, EventID: f.Intern(l.eventID), Seats: l.seats})
	}
	acc.purchases = acc.purchases[:0]
	ua, fu, ec := len(f.UserActivity), len(f.FeatureUsers), len(f.EventCounts)
	rank := a.featureRanks()
	a.drainActs(f, acc)
	f.EventCounts = a.appendCounts(f.EventCounts, acc, -1, 0, 0)
	for i := range f.EventCounts[ec:] {
		a.ecSub[i] = rank[a.ecSub[i]] // feature index + 1 → rank (logins: 0 → 0)
	}
	// Rows come out by user name (then month, feature); each table's key
	// after account_id is reached with a stable counting sort.
	subs := int32(len(a.featName) + 1)
	// (account_id, month, user_id)
	ordered(f.UserActivity[ua:], nil, &a.uaScratch, &a.counting, func(r *schema.UserActivity) int32 { return r.Month }, 1)
	// (account_id, month, feature, user_id)
	ordered(f.FeatureUsers[fu:], a.fuSub, &a.fuScratch, &a.counting, func(r *schema.FeatureUser) int32 { return r.Month }, subs)
	// (account_id, user_id, month, …): already in that order.
	// (account_id, month, kind, feature, src_topic, src_partition, bucket):
	// counts come sorted by partition; logins rank 0, features by name.
	ordered(f.EventCounts[ec:], a.ecSub, &a.ecScratch, &a.counting, func(r *schema.EventCount) int32 { return r.Month }, subs)
	a.fuSub, a.ecSub = a.fuSub[:0], a.ecSub[:0]
}

// drainActs sorts acc's log and appends its facts to f: per user and month
// the latest activity, the features used and the latest seat event; the
// events not yet counted go to acc's bucket counts.
func (a *Aggregator) drainActs(f *schema.Facts, acc *account) {
	acts := a.sortActs(acc)
	for i := 0; i < len(acts); {
		first := &acts[i]
		name := acc.user(first)
		j := i + 1
		for j < len(acts) && acts[j].nkey == first.nkey && bytes.Equal(acc.user(&acts[j]), name) {
			j++
		}
		user := f.Intern(name)
		for k := i; k < j; { // runs of one kind and month
			x := &acts[k]
			e := k + 1
			for e < j && acts[e].kind == x.kind && acts[e].month == x.month {
				e++
			}
			if x.kind == actSeat {
				a.drainSeat(f, acc, user, acts[k:e])
			} else {
				a.drainActivity(f, acc, user, acts[k:e])
			}
			k = e
		}
		i = j
	}
	a.mergeCounts(acc)
	acc.acts = acc.acts[:0]
	acc.buf = acc.buf[:0]
	if cap(acc.acts) > 4096 && len(acts) < cap(acc.acts)/8 { // a burst is over: give the memory back
		acc.acts, acc.buf = nil, nil
	}
}

// sortActs returns acc's log in compare order (users by name). Most of the
// work is a sort of 8-byte keys: 6 bytes of the user name, taken after the
// prefix all of the account's user names share (so that they tell names
// apart: "user-0001234"), then the act's index; acts with equal keys (one
// user's events, or names equal in those bytes) are then ordered by
// compare.
func (a *Aggregator) sortActs(acc *account) []act {
	acts := acc.acts
	if len(acts) == 0 {
		return acts
	}
	if len(acts) > 1<<16 {
		for i := range acts {
			acts[i].nkey = 0
		}
		slices.SortFunc(acts, acc.compare)
		return acts
	}
	first := acc.user(&acts[0])
	lcp := len(first)
	for i := 1; i < len(acts) && lcp > 0; i++ {
		name := acc.user(&acts[i])
		n := min(lcp, len(name))
		j := 0
		for j < n && name[j] == first[j] {
			j++
		}
		lcp = j
	}
	keys := a.keys[:0]
	for i := range acts {
		var w uint64
		name := acc.user(&acts[i])[lcp:]
		for b := range 6 {
			w <<= 8
			if b < len(name) {
				w |= uint64(name[b])
			}
		}
		acts[i].nkey = w
		keys = append(keys, w<<16|uint64(i))
	}
	slices.Sort(keys)
	sorted := a.sorted[:0]
	for _, k := range keys {
		sorted = append(sorted, acts[k&0xffff])
	}
	for i := 0; i < len(sorted); {
		j := i + 1
		for j < len(sorted) && keys[j]>>16 == keys[i]>>16 {
			j++
		}
		switch run := sorted[i:j]; {
		case len(run) > 16:
			slices.SortFunc(run, acc.compare)
		case len(run) > 1:
			for x := 1; x < len(run); x++ { // insertion sort: runs are short
				for y := x; y > 0 && acc.compare(run[y-1], run[y]) > 0; y-- {
					run[y-1], run[y] = run[y], run[y-1]
				}
			}
		}
		i = j
	}
	a.keys, a.sorted = keys, sorted
	return sorted
}

// drainActivity handles the logins and feature_used of one user in one month.
func (a *Aggregator) drainActivity(f *schema.Facts, acc *account, user string, run []act) {
	last := run[0].ms
	for i := 1; i < len(run); i++ {
		last = max(last, run[i].ms)
	}
	month := run[0].month
	f.UserActivity = append(f.UserActivity, schema.UserActivity{Account: acc.name, User: user, Month: month, LastMs: last})
	for i := 0; i < len(run); {
		feat, part := run[i].feat, run[i].part
		if feat != featLogin && (i == 0 || run[i-1].feat != feat) {
			f.FeatureUsers = append(f.FeatureUsers, schema.FeatureUser{Account: acc.name, Feature: a.featName[feat], User: user, Month: month})
			a.fuSub = append(a.fuSub, a.featRank[feat+1])
		}
		key := countKey(part, month, feat)
		for ; i < len(run) && run[i].feat == feat && run[i].part == part; i++ {
			if run[i].flags&flagCounted == 0 {
				a.adds = append(a.adds, key)
			}
		}
	}
}

// drainSeat writes the latest seat event of one user in one month.
func (a *Aggregator) drainSeat(f *schema.Facts, acc *account, user string, run []act) {
	best := &run[0]
	for i := 1; i < len(run); i++ {
		x := &run[i]
		if x.ms > best.ms || x.ms == best.ms && bytes.Compare(acc.eventID(x), acc.eventID(best)) > 0 {
			best = x
		}
	}
	f.SeatEvents = append(f.SeatEvents, schema.SeatEvent{
		Account: acc.name, User: user, Month: best.month, OccurredMs: best.ms,
		EventID: f.Intern(acc.eventID(best)), Assigned: best.flags&flagAssigned != 0,
	})
}

// featureRanks returns, at feature index + 1, 1 + the feature's position
// in name order; at 0 (logins) 0.
func (a *Aggregator) featureRanks() []int32 {
	if len(a.featRank) == len(a.featName)+1 {
		return a.featRank
	}
	idx := make([]int32, len(a.featName))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(x, y int32) int { return strings.Compare(a.featName[x], a.featName[y]) })
	a.featRank = make([]int32, len(a.featName)+1)
	for r, i := range idx {
		a.featRank[i+1] = int32(r) + 1
	}
	return a.featRank
}

// ordered reorders rows stably by (month, sub[i]), where sub[i] is in [0,
// subs) (nil sub: 0), with a counting sort when the key range is small (the
// usual few months of one account), else a stable comparison sort.
func ordered[T any](rows []T, sub []int32, scratch *[]T, counting *[]int32, month func(*T) int32, subs int32) {
	if len(rows) < 2 {
		return
	}
	if sub != nil && len(sub) != len(rows) {
		panic("aggregate: ordered: keys and rows differ in length")
	}
	lo, hi := month(&rows[0]), month(&rows[0])
	for i := range rows {
		m := month(&rows[i])
		lo, hi = min(lo, m), max(hi, m)
	}
	key := func(i int) int32 {
		k := (month(&rows[i]) - lo) * subs
		if sub != nil {
			k += sub[i]
		}
		return k
	}
	n := int(hi-lo+1) * int(subs)
	if n > 4*len(rows)+256 { // a long span of months: sort an index instead
		keys := make([]int64, len(rows))
		for i := range rows {
			keys[i] = int64(key(i))<<32 | int64(i)
		}
		slices.Sort(keys)
		out := append((*scratch)[:0], rows...)
		for i, k := range keys {
			rows[i] = out[int32(k)]
		}
		clear(out)
		*scratch = out[:0]
		return
	}
	c := append((*counting)[:0], make([]int32, n+1+len(rows))...)
	keys := c[n+1:] // each row's key, computed once
	for i := range rows {
		k := key(i)
		keys[i] = k
		c[k+1]++
	}
	for k := 1; k <= n; k++ {
		c[k] += c[k-1]
	}
	out := append((*scratch)[:0], rows...)
	for i := range out {
		k := keys[i]
		rows[c[k]] = out[i]
		c[k]++
	}
	clear(out) // drop references to the rows' strings
	*scratch, *counting = out[:0], c[:0]
}

// Pending approximates the fact rows waiting for the next Drain: a flush
// trigger and a memory bound. It grows by at most one per event.
func (a *Aggregator) Pending() int { return a.pending }

// Names is the number of distinct accounts and feature names held in memory.
func (a *Aggregator) Names() int { return len(a.accounts) + len(a.featName) }
