package aggregate

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// TestSortActsMatchesCompare checks sortActs against a plain sort by
// compare on logs whose names defeat its 6-byte keys on purpose: a long
// common prefix, names equal in the 6 bytes after it, prefixes of each
// other, NUL bytes, and one user with many events.
func TestSortActsMatchesCompare(t *testing.T) {
	names := [][]string{
		{"user-0000001", "user-0000002", "user-0000010", "user-1000001"},
		{"abcdefgh-1", "abcdefgh-2", "abcdefgh", "abcdefgh\x00", "abcdefgh\x00x", "b"},
		{"u", "u\x00", "u\x00\x00", "v"},
		{"same"},
	}
	for ni, set := range names {
		for _, n := range []int{0, 1, 2, 5, 40, 1000} {
			t.Run(fmt.Sprint(ni, "/", n), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(n), uint64(ni)))
				a := New("t")
				acc := &account{name: "acme", agg: a}
				for range n {
					name := set[rng.IntN(len(set))]
					x := act{
						ms:    rng.Int64N(1000),
						month: int32(24300 + rng.IntN(3)),
						part:  int32(rng.IntN(3)),
						feat:  int32(rng.IntN(4)) - 1,
						kind:  uint8(rng.IntN(2)),
						name:  uint32(len(acc.buf)),
						nlen:  uint16(len(name)),
					}
					acc.buf = append(acc.buf, name...)
					acc.acts = append(acc.acts, x)
				}
				want := slices.Clone(acc.acts)
				slices.SortStableFunc(want, acc.compare)
				got := a.sortActs(acc)
				if len(got) != len(want) {
					t.Fatalf("sorted %d acts, want %d", len(got), len(want))
				}
				for i := range got {
					if acc.compare(got[i], want[i]) != 0 {
						t.Fatalf("position %d: %+v (%q), want %+v (%q)", i, got[i], acc.user(&got[i]), want[i], acc.user(&want[i]))
					}
				}
			})
		}
	}
}

// TestDrainAllRowsInKeyOrder feeds two aggregators (disjoint accounts, as
// the consumer's workers have) and checks that DrainAll emits every table
// in its ClickHouse ORDER BY order, with the same rows as draining each
// aggregator on its own.
func TestDrainAllRowsInKeyOrder(t *testing.T) {
	feed := func() (*Aggregator, *Aggregator) {
		rng := rand.New(rand.NewPCG(3, 4))
		a, b := New("t"), New("t")
		a.Assign(0)
		b.Assign(1)
		types := []event.Type{event.Login, event.FeatureUsed, event.SeatAssigned, event.SeatUnassigned, event.SeatsPurchased}
		for i := range 20000 {
			acct := rng.IntN(300)
			ev := &event.Event{
				EventID:      []byte(fmt.Sprint("e", i)),
				Type:         types[rng.IntN(len(types))],
				AccountID:    []byte(fmt.Sprintf("acct-%03d", acct)),
				UserID:       []byte(fmt.Sprintf("u%d", rng.IntN(50))),
				Feature:      []byte(fmt.Sprintf("f%d", rng.IntN(7))),
				OccurredAtMs: 1_767_225_600_000 + rng.Int64N(180*24*3600*1000),
				Seats:        rng.Int64N(100),
			}
			if ev.Type == event.SeatsPurchased {
				ev.UserID = nil
			}
			if acct%2 == 0 {
				a.Add(0, int64(i), ev)
			} else {
				b.Add(1, int64(i), ev)
			}
		}
		return a, b
	}
	a, b := feed()
	var f schema.Facts
	DrainAll(&f, a, b)
	a2, b2 := feed()
	var fa, fb schema.Facts
	a2.Drain(&fa)
	b2.Drain(&fb)

	checkSorted(t, "fact_account_months", f.AccountMonths, func(x, y schema.AccountMonth) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month))
	})
	checkSorted(t, "fact_user_activity", f.UserActivity, func(x, y schema.UserActivity) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month), cmp.Compare(x.User, y.User))
	})
	checkSorted(t, "fact_feature_users", f.FeatureUsers, func(x, y schema.FeatureUser) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month), cmp.Compare(x.Feature, y.Feature), cmp.Compare(x.User, y.User))
	})
	checkSorted(t, "fact_event_counts", f.EventCounts, func(x, y schema.EventCount) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month), cmp.Compare(x.Kind, y.Kind), cmp.Compare(x.Feature, y.Feature),
			cmp.Compare(x.Topic, y.Topic), cmp.Compare(x.Partition, y.Partition), cmp.Compare(x.Bucket, y.Bucket))
	})
	checkSorted(t, "fact_seat_events", f.SeatEvents, func(x, y schema.SeatEvent) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.User, y.User), cmp.Compare(x.Month, y.Month))
	})
	checkSorted(t, "fact_seat_purchases", f.SeatPurchases, func(x, y schema.SeatPurchase) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month))
	})
	sameRows(t, "fact_user_activity", f.UserActivity, append(fa.UserActivity, fb.UserActivity...))
	sameRows(t, "fact_feature_users", f.FeatureUsers, append(fa.FeatureUsers, fb.FeatureUsers...))
	sameRows(t, "fact_event_counts", f.EventCounts, append(fa.EventCounts, fb.EventCounts...))
	sameRows(t, "fact_seat_events", f.SeatEvents, append(fa.SeatEvents, fb.SeatEvents...))
	sameRows(t, "fact_seat_purchases", f.SeatPurchases, append(fa.SeatPurchases, fb.SeatPurchases...))
	sameRows(t, "fact_account_months", f.AccountMonths, append(fa.AccountMonths, fb.AccountMonths...))
}

func checkSorted[T any](t *testing.T, table string, rows []T, cmp func(x, y T) int) {
	t.Helper()
	if len(rows) < 100 {
		t.Fatalf("%s: only %d rows; the test needs more", table, len(rows))
	}
	for i := 1; i < len(rows); i++ {
		if cmp(rows[i-1], rows[i]) > 0 {
			t.Fatalf("%s: row %d %+v sorts before row %d %+v", table, i, rows[i], i-1, rows[i-1])
		}
	}
}

func sameRows[T comparable](t *testing.T, table string, got, want []T) {
	t.Helper()
	n := map[T]int{}
	for _, r := range got {
		n[r]++
	}
	for _, r := range want {
		n[r]--
	}
	for r, c := range n {
		if c != 0 {
			t.Fatalf("%s: row %+v appears %d more times in DrainAll than in separate drains", table, r, c)
		}
	}
}
