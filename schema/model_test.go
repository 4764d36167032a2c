package schema_test

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// ev is one accepted, non-duplicate event at a source offset.
type ev struct {
	id        string
	typ       event.Type
	account   string
	user      string
	feature   string
	ms        int64
	seats     int64
	partition int32
	offset    int64
}

const topic = "usage-events"

func ms(s string) int64 {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

// factsOf builds the facts a writer that consumed the offsets below
// upTo[partition] (all of them when upTo is nil) writes: the reference of
// what aggregate produces.
func factsOf(evs []ev, upTo map[int32]int64) *schema.Facts {
	type amKey struct {
		a string
		m int32
	}
	type uaKey struct {
		a, u string
		m    int32
	}
	type fuKey struct {
		a, f, u string
		m       int32
	}
	type ecKey struct {
		a string
		m int32
		k uint8
		f string
		p int32
		b uint64
	}
	type latest struct {
		ms int64
		id string
		v  int64
	}
	later := func(l latest, e ev) bool { return e.ms > l.ms || e.ms == l.ms && e.id > l.id }
	am := map[amKey]bool{}
	ua := map[uaKey]int64{}
	fu := map[fuKey]bool{}
	ec := map[ecKey]uint64{}
	se := map[uaKey]latest{}
	sp := map[amKey]latest{}
	hi := map[int32]int64{}
	for _, e := range evs {
		if upTo != nil && e.offset >= upTo[e.partition] {
			continue
		}
		hi[e.partition] = max(hi[e.partition], e.offset+1)
		m := quarter.MonthIndex(e.ms)
		am[amKey{e.account, m}] = true
		switch e.typ {
		case event.Login, event.FeatureUsed:
			k := uaKey{e.account, e.user, m}
			ua[k] = max(ua[k], e.ms)
			kind := schema.KindLogin
			if e.typ == event.FeatureUsed {
				kind = schema.KindFeatureUsed
				fu[fuKey{e.account, e.feature, e.user, m}] = true
			}
			ec[ecKey{e.account, m, kind, e.feature, e.partition, uint64(e.offset) / schema.BucketSize}]++
		case event.SeatAssigned, event.SeatUnassigned:
			k := uaKey{e.account, e.user, m}
			if l, ok := se[k]; !ok || later(l, e) {
				v := int64(0)
				if e.typ == event.SeatAssigned {
					v = 1
				}
				se[k] = latest{e.ms, e.id, v}
			}
		case event.SeatsPurchased:
			k := amKey{e.account, m}
			if l, ok := sp[k]; !ok || later(l, e) {
				sp[k] = latest{e.ms, e.id, e.seats}
			}
		}
	}
	f := &schema.Facts{}
	for k := range am {
		f.AccountMonths = append(f.AccountMonths, schema.AccountMonth{Account: k.a, Month: k.m})
	}
	for k, v := range ua {
		f.UserActivity = append(f.UserActivity, schema.UserActivity{Account: k.a, User: k.u, Month: k.m, LastMs: v})
	}
	for k := range fu {
		f.FeatureUsers = append(f.FeatureUsers, schema.FeatureUser{Account: k.a, Feature: k.f, User: k.u, Month: k.m})
	}
	for k, n := range ec {
		end := min(uint64(hi[k.p]), (k.b+1)*schema.BucketSize)
		f.EventCounts = append(f.EventCounts, schema.EventCount{Account: k.a, Month: k.m, Kind: k.k, Feature: k.f, Topic: topic,
			Partition: k.p, Bucket: k.b, CoveredEnd: end, Events: n})
	}
	for k, l := range se {
		f.SeatEvents = append(f.SeatEvents, schema.SeatEvent{Account: k.a, User: k.u, Month: k.m, OccurredMs: l.ms, EventID: l.id, Assigned: l.v == 1})
	}
	for k, l := range sp {
		f.SeatPurchases = append(f.SeatPurchases, schema.SeatPurchase{Account: k.a, Month: k.m, OccurredMs: l.ms, EventID: l.id, Seats: l.v})
	}
	return f
}

// expect computes the contract's rollups (section 4) straight from the
// events, with no facts in between.
func expect(evs []ev, fiscalStart int) ([]schema.Rollup, []schema.FeatureRow) {
	fy := quarter.Fiscal{StartMonth: fiscalStart}
	first := map[string]int32{}
	var last int32
	for _, e := range evs {
		m := quarter.MonthIndex(e.ms)
		if f, ok := first[e.account]; !ok || m < f {
			first[e.account] = m
		}
		last = max(last, m)
	}
	accounts := make([]string, 0, len(first))
	for a := range first {
		accounts = append(accounts, a)
	}
	sort.Strings(accounts)
	later := func(a, b ev) bool { return a.ms > b.ms || a.ms == b.ms && a.id > b.id }
	var rollups []schema.Rollup
	var features []schema.FeatureRow
	for _, a := range accounts {
		for q := fy.QuarterIndex(first[a]); q <= fy.QuarterIndex(last); q += 3 {
			start, end := quarter.MonthStart(q), quarter.MonthStart(q+3)
			r := schema.Rollup{AccountID: a, QuarterStart: start, QuarterEnd: end, Quarter: fy.Label(q), LastActivityAt: time.Unix(0, 0).UTC()}
			var purchase *ev
			seat := map[string]ev{}
			active := map[string]bool{}
			feats := map[string]map[string]bool{}
			featEvents := map[string]uint64{}
			var lastMs int64
			for i := range evs {
				e := evs[i]
				if e.account != a || e.ms >= end.UnixMilli() {
					continue
				}
				in := e.ms >= start.UnixMilli()
				switch e.typ {
				case event.SeatsPurchased:
					if purchase == nil || later(e, *purchase) {
						purchase = &evs[i]
					}
				case event.SeatAssigned, event.SeatUnassigned:
					if s, ok := seat[e.user]; !ok || later(e, s) {
						seat[e.user] = e
					}
				case event.Login, event.FeatureUsed:
					if !in {
						continue
					}
					active[e.user] = true
					lastMs = max(lastMs, e.ms)
					if e.typ == event.Login {
						r.Logins++
						continue
					}
					r.FeatureEvents++
					if feats[e.feature] == nil {
						feats[e.feature] = map[string]bool{}
					}
					feats[e.feature][e.user] = true
					featEvents[e.feature]++
				}
			}
			if purchase != nil {
				r.SeatsPurchased = uint64(purchase.seats)
			}
			for u, s := range seat {
				if s.typ == event.SeatAssigned {
					r.SeatsAssigned++
					if active[u] {
						r.ActiveAssignedUsers++
					}
				}
			}
			r.ActiveUsers = uint64(len(active))
			r.FeaturesUsed = uint64(len(feats))
			if r.SeatsPurchased > 0 {
				r.SeatUtilization = float64(r.SeatsAssigned) / float64(r.SeatsPurchased)
			}
			if r.SeatsAssigned > 0 {
				r.ActivationRate = float64(r.ActiveAssignedUsers) / float64(r.SeatsAssigned)
			}
			if lastMs > 0 {
				r.LastActivityAt = time.Unix(lastMs/1000, 0).UTC()
			}
			rollups = append(rollups, r)
			names := make([]string, 0, len(feats))
			for f := range feats {
				names = append(names, f)
			}
			sort.Strings(names)
			for _, f := range names {
				features = append(features, schema.FeatureRow{AccountID: a, QuarterStart: start, Feature: f, ActiveUsers: uint64(len(feats[f])), Events: featEvents[f]})
			}
		}
	}
	return rollups, features
}

// randomEvents makes n events over about two years for a few accounts,
// with coarse timestamps (many ties), quote-laden and non-ASCII IDs, and
// offsets that cross count buckets.
func randomEvents(rng *rand.Rand, n int) []ev {
	accounts := []string{"acme", "Ünïcødé-账户", `o'brien "quoted" \ back`, "tab\there", "zeta"}
	users := []string{"u1", "u2", "u3", "u4", "ü5", "u'6"}
	featuresList := []string{"search", "export", "报告", "it's"}
	base := ms("2025-11-03T00:00:00Z")
	evs := make([]ev, 0, n)
	offsets := map[int32]int64{}
	for range n {
		a := accounts[rng.IntN(len(accounts))]
		p := int32(len(a) % 3)
		e := ev{
			id:        fmt.Sprintf("%016x", rng.Uint64()),
			account:   a,
			user:      users[rng.IntN(len(users))],
			ms:        base + int64(rng.IntN(24*30*26))*3_600_000, // hourly over ~26 months
			partition: p,
			offset:    offsets[p],
		}
		offsets[p] += 1 + int64(rng.IntN(40_000))
		switch x := rng.IntN(20); {
		case x < 7:
			e.typ = event.Login
		case x < 13:
			e.typ = event.FeatureUsed
			e.feature = featuresList[rng.IntN(len(featuresList))]
		case x < 16:
			e.typ = event.SeatAssigned
		case x < 18:
			e.typ = event.SeatUnassigned
		default:
			e.typ = event.SeatsPurchased
			e.user = ""
			e.seats = int64(rng.IntN(6))
		}
		evs = append(evs, e)
	}
	return evs
}

// maxOffsets is, per partition, one past the greatest offset.
func maxOffsets(evs []ev) map[int32]int64 {
	m := map[int32]int64{}
	for _, e := range evs {
		m[e.partition] = max(m[e.partition], e.offset+1)
	}
	return m
}

func fmtRollups(rs []schema.Rollup) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = fmt.Sprintf("%q %s %s %s purchased=%d assigned=%d util=%v active=%d activeAssigned=%d activation=%v logins=%d featureEvents=%d features=%d last=%s",
			r.AccountID, r.QuarterStart.Format(time.DateOnly), r.QuarterEnd.Format(time.DateOnly), r.Quarter, r.SeatsPurchased, r.SeatsAssigned,
			r.SeatUtilization, r.ActiveUsers, r.ActiveAssignedUsers, r.ActivationRate, r.Logins, r.FeatureEvents, r.FeaturesUsed,
			r.LastActivityAt.Format(time.DateTime+" MST"))
	}
	return out
}

func fmtFeatures(fs []schema.FeatureRow) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = fmt.Sprintf("%q %s %q users=%d events=%d", f.AccountID, f.QuarterStart.Format(time.DateOnly), f.Feature, f.ActiveUsers, f.Events)
	}
	return out
}

// diff describes how got differs from want, line by line ("" if equal).
func diff(got, want []string) string {
	var b strings.Builder
	for i := range max(len(got), len(want)) {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			fmt.Fprintf(&b, "row %d:\n  got  %s\n  want %s\n", i, g, w)
		}
	}
	return b.String()
}
