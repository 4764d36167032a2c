package schema

import (
	"slices"
	"unsafe"
)

// Fact rows: what one flush writes to ClickHouse. Each table is written so
// that writing the same row again, or a row computed from more of the same
// offsets, never changes what the views return (see the package comment).
//
// Month is a month index: year*12 + (month-1) of the UTC month (see
// aggregate/quarter); the store turns it into a Date.

// AccountMonth says account Account had an accepted, non-duplicate event in
// Month. Table fact_account_months.
type AccountMonth struct {
	Account string
	Month   int32
}

// UserActivity is a user's latest login/feature_used in a month.
// Table fact_user_activity (ReplacingMergeTree keeps the greatest LastMs).
type UserActivity struct {
	Account string
	User    string
	Month   int32
	LastMs  int64
}

// FeatureUser says User used Feature in Month. Table fact_feature_users.
type FeatureUser struct {
	Account string
	Feature string
	User    string
	Month   int32
}

// Count kinds of EventCount.
const (
	KindLogin       uint8 = 1 // Feature is ""
	KindFeatureUsed uint8 = 2
)

// EventCount is the number of accepted, non-duplicate events of one
// (account, month, kind, feature) among the source offsets
// [Bucket*BucketSize, CoveredEnd) of one partition. Table fact_event_counts
// (ReplacingMergeTree(covered_end): the row covering the most offsets wins;
// it is a pure function of those offsets, so any writer writes the same).
type EventCount struct {
	Account    string
	Month      int32
	Kind       uint8
	Feature    string
	Topic      string
	Partition  int32
	Bucket     uint64
	CoveredEnd uint64
	Events     uint64
}

// BucketSize is the number of source offsets per count bucket. It is part
// of the stored data's meaning: changing it would make old and new rows
// overlap, so it is a constant, not a setting.
const BucketSize = 1 << 20

// SeatEvent is the latest seat_assigned/seat_unassigned of (account, user)
// within a month as one writer saw it; readers take the greatest
// (OccurredMs, EventID) over all rows. Table fact_seat_events.
type SeatEvent struct {
	Account    string
	User       string
	Month      int32
	OccurredMs int64
	EventID    string
	Assigned   bool
}

// SeatPurchase is the latest seats_purchased of an account within a month as
// one writer saw it; readers take the greatest (OccurredMs, EventID).
// Table fact_seat_purchases.
type SeatPurchase struct {
	Account    string
	Month      int32
	OccurredMs int64
	EventID    string
	Seats      int64
}

// Facts is everything one flush writes.
type Facts struct {
	AccountMonths []AccountMonth
	UserActivity  []UserActivity
	FeatureUsers  []FeatureUser
	EventCounts   []EventCount
	SeatEvents    []SeatEvent
	SeatPurchases []SeatPurchase
	// DedupIDs are written after the facts and marks and before the
	// progress rows: an archived record is a counted one, and progress
	// never vouches for a record whose ID is not stored.
	DedupIDs []*DedupIDs
	// Progress is written after every other table: a row lands only once
	// the facts it vouches for are acknowledged.
	Progress []Progress

	arena []byte // backs the strings of Intern; never rewritten
}

// Rows is the total number of rows in f.
func (f *Facts) Rows() int {
	return len(f.AccountMonths) + len(f.UserActivity) + len(f.FeatureUsers) + len(f.EventCounts) + len(f.SeatEvents) + len(f.SeatPurchases) + len(f.Progress) + f.DedupRows()
}

// DedupRows is the number of archive entries in f.
func (f *Facts) DedupRows() int {
	n := 0
	for _, d := range f.DedupIDs {
		n += d.Len()
	}
	return n
}

// Reset empties f, keeping its capacity.
func (f *Facts) Reset() {
	f.AccountMonths = f.AccountMonths[:0]
	f.UserActivity = f.UserActivity[:0]
	f.FeatureUsers = f.FeatureUsers[:0]
	f.EventCounts = f.EventCounts[:0]
	f.SeatEvents = f.SeatEvents[:0]
	f.SeatPurchases = f.SeatPurchases[:0]
	f.Progress = f.Progress[:0]
	clear(f.DedupIDs) // recycled by the consumer before, or left to the GC
	f.DedupIDs = f.DedupIDs[:0]
	f.arena = nil
}

// Reserve makes room in each of f's tables for scale times as many rows
// as g holds (plus a quarter), so that filling f does not regrow its
// slices: g is an earlier flush, scale how much more this one holds. Only
// capacity changes; f's rows stay.
func (f *Facts) Reserve(g *Facts, scale float64) {
	n := func(rows int) int { return int(float64(rows) * max(scale, 1)) }
	f.AccountMonths = reserve(f.AccountMonths, n(len(g.AccountMonths)))
	f.UserActivity = reserve(f.UserActivity, n(len(g.UserActivity)))
	f.FeatureUsers = reserve(f.FeatureUsers, n(len(g.FeatureUsers)))
	f.EventCounts = reserve(f.EventCounts, n(len(g.EventCounts)))
	f.SeatEvents = reserve(f.SeatEvents, n(len(g.SeatEvents)))
	f.SeatPurchases = reserve(f.SeatPurchases, n(len(g.SeatPurchases)))
}

func reserve[T any](s []T, n int) []T {
	if cap(s)-len(s) >= n {
		return s
	}
	return slices.Grow(s, n+n/4)
}

// arenaChunk is the size of one block of Facts' string arena.
const arenaChunk = 64 << 10

// Intern returns a string with b's bytes, stored in f's arena: many short
// names cost one allocation per 64 KiB instead of one each. The strings
// stay valid after Reset (Reset starts new blocks; it never rewrites old
// ones), so a caller may keep rows of an earlier flush.
func (f *Facts) Intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > cap(f.arena)-len(f.arena) {
		f.arena = make([]byte, 0, max(arenaChunk, len(b)))
	}
	n := len(f.arena)
	f.arena = append(f.arena, b...)
	return unsafe.String(&f.arena[n], len(b))
}
