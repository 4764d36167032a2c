package live

import (
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/usagepipe/usagepipe/schema"
)

// account is one cached account's merged facts, and the row's figures
// kept up to date as rows merge (so a row costs O(features), not O(users)).
// Users are numbered per account: one map from name to number, and
// everything else in slices without pointers (bitsets for feature users,
// an arena for seat event IDs), which the garbage collector need not
// scan.
type account struct {
	loaded      time.Time         // when it was loaded
	ids         map[string]uint32 // user → its number in users
	users       []user            // by number
	eids        []byte            // the users' seat event IDs, back to back
	eidLive     int               // bytes of eids that are current IDs
	counts      []countVal        // the quarter's counts, per key of one partition (a few dozen: searched in order)
	bought      seat              // latest seats_purchased (seats in seats)
	hasPurchase bool
	bytes       int // estimate of what the account holds
	// parts: the partitions of each source topic its counts came from.
	// More than one means its events are not keyed by account: another
	// process may write its facts, so it leaves the live path (Unkeyed).
	parts map[string][]int32

	active         uint64    // users with activity in the quarter
	seatsAssigned  uint64    // users whose latest seat event is an assignment
	activeAssigned uint64    // active users among them
	lastMs         int64     // greatest activity
	logins         uint64    // sum of the login counts
	featureEvents  uint64    // sum of the feature_used counts
	features       []feature // the quarter's features (with a user or a count), by name
}

// user is what an account knows of one of its users.
type user struct {
	lastMs   int64  // greatest activity in the quarter (when active)
	seatMs   int64  // latest seat event (when hasSeat)
	eidOff   uint32 // its event ID in eids
	eidLen   uint32
	active   bool
	hasSeat  bool
	assigned bool
}

// feature is one feature of the quarter: its users (a bitset of user
// numbers) and feature_used count.
type feature struct {
	name   string
	users  []uint64
	nUsers uint64
	events uint64
}

// countKey is a count key of fact_event_counts without its bucket.
type countKey struct {
	month     int32
	kind      uint8
	feature   string
	topic     string
	partition int32
}

// countVal holds a count key's buckets in O(1): the sum of every bucket
// below the open one, and the open one's row with the greatest
// covered_end. A partition's count rows arrive in bucket order (a flush
// writes a bucket's last row no later than the first row of the next
// one, each flush in key order, and a load returns the key's sum and its
// greatest bucket), and a bucket's last row is final: so when a row of a
// later bucket arrives the open one is folded into the sum, and a row of
// an earlier bucket, from a replay or a zombie, is at most the final row
// already counted (ReplacingMergeTree(covered_end) keeps the final one).
type countVal struct {
	key        countKey
	sum        uint64 // buckets below bucket
	bucket     uint64 // the open bucket
	coveredEnd uint64
	events     uint64
}

func (v *countVal) total() uint64 { return v.sum + v.events }

// seat is the latest seats_purchased under the contract's tie rule
// (greater occurred_at, then greater event_id).
type seat struct {
	ms      int64
	eventID string
	seats   int64
}

func (x seat) newer(ms int64, eventID string) bool {
	if ms != x.ms {
		return ms > x.ms
	}
	return eventID > x.eventID
}

// Rough per-entry costs of Go maps (bucket slot, header, overhead), for
// the memory estimate only.
const (
	entryBytes = 48
	strBytes   = int(unsafe.Sizeof(""))
)

func newAccount(now time.Time) *account {
	return &account{
		loaded: now,
		ids:    map[string]uint32{},
		parts:  map[string][]int32{},
		bytes:  4 * entryBytes,
	}
}

// next returns the account's state for the next quarter: its users with
// a seat event (numbered anew, their event IDs in a new arena) and its
// purchase, without activity, features, counts or partitions. It shares
// nothing that either account changes (names are never changed).
func (a *account) next() *account {
	n := newAccount(a.loaded)
	n.bought, n.hasPurchase = a.bought, a.hasPurchase
	for name, id := range a.ids {
		u := &a.users[id]
		if !u.hasSeat {
			continue
		}
		n.ids[name] = uint32(len(n.users))
		n.users = append(n.users, user{seatMs: u.seatMs, eidOff: uint32(len(n.eids)), eidLen: u.eidLen, hasSeat: true, assigned: u.assigned})
		n.eids = append(n.eids, a.eids[u.eidOff:u.eidOff+u.eidLen]...)
		n.bytes += entryBytes + len(name) + int(unsafe.Sizeof(user{})) + int(u.eidLen)
		if u.assigned {
			n.seatsAssigned++
		}
	}
	n.eidLive = len(n.eids)
	return n
}

// Names that enter the state are cloned: a fact's strings share a flush's
// arena, which a retained name would keep alive whole.

// user returns the number of user name, adding it.
func (a *account) user(name string) uint32 {
	id, ok := a.ids[name]
	if !ok {
		id = uint32(len(a.users))
		a.ids[strings.Clone(name)] = id
		a.users = append(a.users, user{})
		a.bytes += entryBytes + len(name) + int(unsafe.Sizeof(user{}))
	}
	return id
}

func (a *account) activity(name string, ms int64) {
	id := a.user(name) // (before indexing: it may grow users)
	u := &a.users[id]
	if !u.active {
		u.active = true
		a.active++
		if u.assigned {
			a.activeAssigned++
		}
	}
	u.lastMs = max(u.lastMs, ms)
	a.lastMs = max(a.lastMs, ms)
}

func (a *account) featureUser(name, userName string) {
	f := a.feature(name)
	id := a.user(userName)
	w := int(id / 64)
	if w >= len(f.users) {
		a.bytes += 8 * (w + 1 - len(f.users))
		f.users = append(f.users, make([]uint64, w+1-len(f.users))...)
	}
	if bit := uint64(1) << (id % 64); f.users[w]&bit == 0 {
		f.users[w] |= bit
		f.nUsers++
	}
}

// feature returns the quarter's feature name, adding it (in name order).
func (a *account) feature(name string) *feature {
	i, ok := slices.BinarySearchFunc(a.features, name, func(f feature, n string) int { return strings.Compare(f.name, n) })
	if !ok {
		a.features = slices.Insert(a.features, i, feature{name: strings.Clone(name)})
		a.bytes += entryBytes + len(name)
	}
	return &a.features[i]
}

// count merges a count row (see countVal); sum is the key's buckets below
// r's (a load's row), 0 for a flush's row.
func (a *account) count(r *schema.EventCount, sum uint64) {
	k := countKey{month: r.Month, kind: r.Kind, feature: r.Feature, topic: r.Topic, partition: r.Partition}
	i := slices.IndexFunc(a.counts, func(v countVal) bool {
		return v.key.month == k.month && v.key.kind == k.kind && v.key.partition == k.partition && v.key == k // numbers first
	})
	if i < 0 {
		k.feature, k.topic = strings.Clone(k.feature), strings.Clone(k.topic)
		a.counts = append(a.counts, countVal{key: k, sum: sum, bucket: r.Bucket, coveredEnd: r.CoveredEnd, events: r.Events})
		a.bytes += entryBytes + 2*strBytes + len(r.Feature) + len(r.Topic)
		a.notePartition(k.topic, r.Partition)
		a.countChanged(r.Kind, r.Feature, 0, sum+r.Events)
		return
	}
	v := &a.counts[i]
	before := v.total()
	switch {
	case r.Bucket > v.bucket:
		v.sum += v.events + sum
		v.bucket, v.coveredEnd, v.events = r.Bucket, r.CoveredEnd, r.Events
	case r.Bucket == v.bucket && r.CoveredEnd > v.coveredEnd:
		// ReplacingMergeTree(covered_end) keeps the row covering the
		// most offsets; rows of equal covered_end are equal.
		v.coveredEnd, v.events = r.CoveredEnd, r.Events
	}
	a.countChanged(r.Kind, r.Feature, before, v.total())
}

// countChanged moves the sums by a key's change from before to after.
func (a *account) countChanged(kind uint8, feature string, before, after uint64) {
	if before == after {
		return
	}
	switch kind {
	case schema.KindLogin:
		a.logins += after - before
	case schema.KindFeatureUsed:
		a.featureEvents += after - before
		a.feature(feature).events += after - before
	}
}

func (a *account) notePartition(topic string, p int32) {
	ps := a.parts[topic]
	if !slices.Contains(ps, p) {
		a.parts[topic] = append(ps, p)
	}
}

// unkeyed reports whether the account's counts came from two partitions
// of one topic.
func (a *account) unkeyed() bool {
	for _, ps := range a.parts {
		if len(ps) > 1 {
			return true
		}
	}
	return false
}

func (a *account) seat(r *schema.SeatEvent) {
	id := a.user(r.User) // (before indexing: it may grow users)
	u := &a.users[id]
	if u.hasSeat {
		if r.OccurredMs < u.seatMs {
			return
		}
		if r.OccurredMs == u.seatMs && r.EventID <= string(a.eids[u.eidOff:u.eidOff+u.eidLen]) {
			return
		}
	}
	if len(a.eids) > 2*a.eidLive+4096 {
		a.compactEIDs() // the IDs of superseded events are garbage
	}
	if u.hasSeat {
		a.eidLive -= int(u.eidLen)
	}
	u.seatMs, u.eidOff, u.eidLen, u.hasSeat = r.OccurredMs, uint32(len(a.eids)), uint32(len(r.EventID)), true
	a.eids = append(a.eids, r.EventID...)
	a.eidLive += len(r.EventID)
	a.bytes += len(r.EventID)
	if u.assigned == r.Assigned {
		return
	}
	u.assigned = r.Assigned
	switch {
	case r.Assigned:
		a.seatsAssigned++
		if u.active {
			a.activeAssigned++
		}
	default:
		a.seatsAssigned--
		if u.active {
			a.activeAssigned--
		}
	}
}

// compactEIDs copies the current seat event IDs to a new arena.
func (a *account) compactEIDs() {
	var eids []byte
	for i := range a.users {
		u := &a.users[i]
		if u.hasSeat {
			off := uint32(len(eids))
			eids = append(eids, a.eids[u.eidOff:u.eidOff+u.eidLen]...)
			u.eidOff = off
		}
	}
	a.bytes += len(eids) - len(a.eids)
	a.eids, a.eidLive = eids, len(eids)
}

func (a *account) purchase(r *schema.SeatPurchase) {
	if !a.hasPurchase || a.bought.newer(r.OccurredMs, r.EventID) {
		a.bought = seat{ms: r.OccurredMs, eventID: strings.Clone(r.EventID), seats: r.Seats}
		a.hasPurchase = true
	}
}
