package gen

import (
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/schema"
)

// TestUniformStreamUnchanged pins the default (uniform) stream byte for
// byte: the benchmarks measure it, so their figures stay comparable across
// changes to the realistic population.
func TestUniformStreamUnchanged(t *testing.T) {
	f := func(cfg Config, want uint64) {
		t.Helper()
		h := fnv.New64a()
		g := New(cfg)
		var r Record
		for g.Next(&r) {
			h.Write(r.Key)
			h.Write(r.Value)
			h.Write([]byte(strconv.FormatInt(r.TimestampMs, 10) + r.WantReason))
		}
		if got := h.Sum64(); got != want {
			t.Errorf("stream of %+v hashes to %#x, want %#x", cfg, got, want)
		}
	}
	f(smallConfig(), 0xb74bb14fb4bb297b) // (2026-12-07: one bad occurred_at, 10 fraction digits, became a leap second: RFC 3339 allows any number of digits)
	f(Config{Seed: 1, Events: 300_000, BadRatio: 0.01, DupRatio: 0.01, RecordTime: testRecordTime}, 0xa068050c3433585c)
}

func realisticConfig() Config {
	return Config{Seed: 42, Events: 100_000, Accounts: 150, Users: 10_000, Features: 25, Quarters: 4, Population: PopulationRealistic,
		BadRatio: 0.01, DupRatio: 0.02, EdgeCases: true, RecordTime: testRecordTime.AddDate(0, 4, 0)}
}

// TestRealisticPopulation checks that the realistic population is
// deterministic, valid, follows its plans exactly at every quarter's end,
// and has the shapes a customer base has.
func TestRealisticPopulation(t *testing.T) {
	cfg := realisticConfig()
	g := New(cfg)
	recs := all(g)
	if again := all(New(cfg)); !slices.EqualFunc(recs, again, func(a, b Record) bool {
		return string(a.Key) == string(b.Key) && string(a.Value) == string(b.Value) && a.TimestampMs == b.TimestampMs
	}) {
		t.Fatal("the same config gave different records")
	}
	if len(recs) != g.Total() {
		t.Fatalf("%d records, Total says %d", len(recs), g.Total())
	}
	res := reference.Compute(asReference(recs), reference.Options{})
	bad := 0
	for _, r := range recs {
		if r.WantReason != "" {
			bad++
		}
	}
	if len(res.Rejected) != bad || res.Accepted+res.Duplicates+bad != len(recs) {
		t.Errorf("%d bad, reference: %d rejected, %d accepted, %d duplicates of %d", bad, len(res.Rejected), res.Accepted, res.Duplicates, len(recs))
	}
	if g.pop.users < cfg.Users*9/10 || g.pop.users > cfg.Users*11/10 {
		t.Errorf("%d users, want about %d", g.pop.users, cfg.Users)
	}

	// Every account's rows equal its plan at each quarter's end.
	quarters := map[string]int{"2026-Q1": 0, "2026-Q2": 1, "2026-Q3": 2, "2026-Q4": 3}
	byQuarter := make([]map[int]schema.Rollup, 4)
	for q := range byQuarter {
		byQuarter[q] = map[int]schema.Rollup{}
	}
	planned := 0
	for _, r := range res.Rollups {
		n, ok := strings.CutPrefix(r.AccountID, "acct-")
		if !ok {
			continue
		}
		a, _ := strconv.Atoi(n)
		q := quarters[r.Quarter]
		byQuarter[q][a] = r
		pl := g.pop.plans[a]
		if q < pl.first {
			continue
		}
		planned++
		if int(r.SeatsPurchased) != pl.seats[q] || int(r.SeatsAssigned) != pl.hi[q]-pl.lo[q] {
			t.Errorf("%s %s: %d seats purchased, %d assigned; planned %d, %d", r.AccountID, r.Quarter, r.SeatsPurchased, r.SeatsAssigned, pl.seats[q], pl.hi[q]-pl.lo[q])
		}
	}
	if planned < cfg.Accounts*3 {
		t.Errorf("%d account-quarters planned, want most of %d", planned, 4*cfg.Accounts)
	}

	// The shapes, in the latest quarter and from the one before.
	var seats []int
	var underAssigned, lowActivation, healthy, grew, shrank, newer int
	for a, r := range byQuarter[3] {
		seats = append(seats, int(r.SeatsPurchased))
		if r.SeatsPurchased < 10 {
			continue
		}
		if r.SeatUtilization < 0.8 {
			underAssigned++
		}
		if r.ActivationRate < 0.5 {
			lowActivation++
		}
		if r.SeatUtilization >= 0.9 && r.ActivationRate >= 0.7 {
			healthy++
		}
		switch p, ok := byQuarter[2][a]; {
		case !ok || p.SeatsPurchased == 0:
			newer++
		case p.SeatsPurchased < r.SeatsPurchased:
			grew++
		case p.SeatsPurchased > r.SeatsPurchased:
			shrank++
		}
	}
	slices.Sort(seats)
	t.Logf("latest quarter: %d accounts, seats %d…%d (median %d); %d under-assigned, %d low activation, %d healthy; %d grew, %d shrank, %d new",
		len(seats), seats[0], seats[len(seats)-1], seats[len(seats)/2], underAssigned, lowActivation, healthy, grew, shrank, newer)
	f := func(what string, got, min int) {
		t.Helper()
		if got < min {
			t.Errorf("%s: %d, want at least %d", what, got, min)
		}
	}
	f("accounts in the latest quarter", len(seats), cfg.Accounts*9/10)
	f("seats of the largest account", seats[len(seats)-1], 1000)
	f("accounts of at most 5 seats", len(seats)-len(slices.DeleteFunc(slices.Clone(seats), func(s int) bool { return s <= 5 })), cfg.Accounts/10)
	f("under-assigned accounts (<80%)", underAssigned, cfg.Accounts/10)
	f("low-activation accounts (<50%)", lowActivation, cfg.Accounts/10)
	f("healthy accounts", healthy, cfg.Accounts/5)
	f("accounts that bought seats", grew, cfg.Accounts/20)
	f("accounts that cut seats", shrank, 2)
	f("new accounts", newer, 2)
}
