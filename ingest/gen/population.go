package gen

import (
	"math"
	"math/rand/v2"
	"sort"
)

// Populations (Config.Population).
const (
	// PopulationUniform is the default and what the benchmarks measure:
	// user u belongs to account u mod Accounts, a few low-numbered accounts
	// are busiest, and seat events are random (so nearly every user ends up
	// holding a seat and active).
	PopulationUniform = "uniform"
	// PopulationRealistic looks like a customer base (the demo and
	// `usagepipe gen` use it); see population.
	PopulationRealistic = "realistic"
)

// population is a realistic customer base over the occurred_at range, cut
// into periods of three months from Start (calendar quarters for the
// default Start). Each account follows a plan fixed at New from the seed:
//
//   - Size: purchased seats are log-normal, from one or a handful to
//     thousands (a long tail); the pools of users add up to about
//     Config.Users.
//   - Segment: healthy (nearly every seat assigned, most holders active, a
//     few over-assigned), under-assigned (40–75% of the seats assigned),
//     low activation (10–40% of seat holders active), growing (more seats
//     bought every period, assignment lagging behind) and shrinking
//     (fewer holders and less activity every period, then fewer seats
//     bought at a renewal).
//   - About one account in eight starts in a later period (a new customer).
//   - A few percent of seat holders turn over every period (unassigned,
//     replaced by new users), and a few users without a seat are active.
//
// The seat events of a period (per account: a purchase of more seats,
// unassignments, assignments, a purchase of fewer seats, in that order;
// accounts interleaved) are spread over the period's first 80% of records,
// at most one record in two, with occurred_at inside the period; what does
// not fit moves on to the next period. The other valid records are logins
// and feature uses by users picked evenly among those active in the
// period, so big accounts are busy. Each period's end therefore matches the
// plan exactly when the stream has about ten or more events per user; with
// fewer, assignment lags behind it.
type population struct {
	periodMs []int64 // period starts, then the end of the range
	plans    []acctPlan
	bases    []int     // first global user index of each account, ascending
	active   [][]int32 // per period: global indexes of the users active in it
	users    int       // global user indexes are [0, users)

	period int          // the period of the stream position, -1 before the first
	queue  []seatChange // seat changes in emission order
	sent   int          // of queue
	start  int          // stream position where queue was filled
	end    int          // first stream position after period
}

// acctPlan is one account's plan, per period. Users are local indexes
// [0, pool); at the end of period q users [lo[q], hi[q]) hold a seat.
type acctPlan struct {
	first  int // first period with events
	seats  []int
	lo, hi []int
	engage []float64 // share of seat holders active
	pool   int
}

type seatChange struct {
	account int32
	user    int32 // global index; purchases have none
	kind    uint8
	seats   int32
}

const (
	changePurchase = iota
	changeAssign
	changeUnassign
)

// segment is a kind of customer and its share of accounts.
type segment struct {
	share float64
	plan  func(r *rand.Rand, periods int, first int) segPlan
}

// segPlan is a plan in real numbers for a base of one seat: seats and
// assigned per period (scaled by the account's size later), engagement,
// and the share of holders replaced per period.
type segPlan struct {
	seats, assigned, engage []float64
	turnover                float64
}

func uniform(r *rand.Rand, lo, hi float64) float64 { return lo + (hi-lo)*r.Float64() }

var segments = []segment{
	{0.45, func(r *rand.Rand, n, first int) segPlan { // healthy
		growth, ratio, engage := uniform(r, 0.97, 1.1), uniform(r, 0.9, 1.04), uniform(r, 0.7, 0.95)
		return buildPlan(n, first, uniform(r, 0, 0.05), func(k int, seats float64) (float64, float64, float64) {
			return seats * growth, ratio, min(0.98, engage+uniform(r, -0.05, 0.05))
		})
	}},
	{0.15, func(r *rand.Rand, n, first int) segPlan { // under-assigned
		ratio, engage, drift := uniform(r, 0.4, 0.75), uniform(r, 0.55, 0.85), uniform(r, -0.06, 0.03)
		return buildPlan(n, first, uniform(r, 0, 0.04), func(k int, seats float64) (float64, float64, float64) {
			return seats, max(0.2, ratio+drift*float64(k)), engage
		})
	}},
	{0.15, func(r *rand.Rand, n, first int) segPlan { // low activation
		ratio, engage, drift := uniform(r, 0.85, 1.0), uniform(r, 0.1, 0.4), uniform(r, -0.06, 0.04)
		return buildPlan(n, first, uniform(r, 0, 0.04), func(k int, seats float64) (float64, float64, float64) {
			return seats, ratio, max(0.03, engage+drift*float64(k))
		})
	}},
	{0.15, func(r *rand.Rand, n, first int) segPlan { // growing: assignment lags the purchases
		growth, ratio, engage := uniform(r, 1.15, 1.5), uniform(r, 0.9, 1.0), uniform(r, 0.65, 0.9)
		lag := uniform(r, 0.3, 0.7)
		return buildPlan(n, first, uniform(r, 0, 0.04), func(k int, seats float64) (float64, float64, float64) {
			if k == 0 {
				return seats, ratio, engage
			}
			next := seats * growth
			return next, ratio * (seats + lag*(next-seats)) / next, engage
		})
	}},
	{0.10, func(r *rand.Rand, n, first int) segPlan { // shrinking: fewer holders, less use, then fewer seats
		keep, fade, resize := uniform(r, 0.7, 0.9), uniform(r, 0.6, 0.85), uniform(r, 0.8, 0.95)
		renewal := first + 1 + r.IntN(max(1, n-first-1))
		holders, engage := uniform(r, 0.85, 1.0), uniform(r, 0.6, 0.85)
		return buildPlan(n, first, uniform(r, 0.02, 0.08), func(k int, seats float64) (float64, float64, float64) {
			if k > 0 {
				holders *= keep
				engage *= fade
			}
			if first+k == renewal { // renewed for about as many seats as are used
				seats = holders / resize
			}
			return seats, holders / seats, engage
		})
	}},
}

// buildPlan runs step for each period from first on: given the period's
// index k (from first) and the previous seats (1 at k = 0), it returns the
// period's seats, assigned share of them and engagement.
func buildPlan(n, first int, turnover float64, step func(k int, prev float64) (seats, ratio, engage float64)) segPlan {
	p := segPlan{seats: make([]float64, n), assigned: make([]float64, n), engage: make([]float64, n), turnover: turnover}
	seats := 1.0
	for q := first; q < n; q++ {
		var ratio, engage float64
		seats, ratio, engage = step(q-first, seats)
		p.seats[q], p.assigned[q], p.engage[q] = seats, seats*ratio, engage
	}
	return p
}

// newPopulation draws the plans of cfg's accounts (with their own random
// source: the event stream's draws do not depend on them).
func newPopulation(cfg Config, periodMs []int64) *population {
	r := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x706f70756c617465)) // "populate"
	n := len(periodMs) - 1
	type draft struct {
		weight float64
		seg    segPlan
	}
	drafts := make([]draft, cfg.Accounts)
	var total float64
	for a := range drafts {
		first := 0
		if n > 1 && a > 0 && r.IntN(8) == 0 {
			first = 1 + r.IntN(n-1)
		}
		x, s := r.Float64(), 0
		for s < len(segments)-1 && x >= segments[s].share {
			x -= segments[s].share
			s++
		}
		d := draft{weight: math.Exp(1.7 * r.NormFloat64()), seg: segments[s].plan(r, n, first)}
		pool, lo := 0.0, 0.0 // the account's pool for a base of one seat
		for q := first + 1; q < n; q++ {
			lo += d.seg.assigned[q-1] * d.seg.turnover
			pool = max(pool, lo+d.seg.assigned[q])
		}
		total += d.weight * max(pool, d.seg.assigned[first])
		drafts[a] = d
	}
	scale := float64(cfg.Users) / total

	p := &population{periodMs: periodMs, plans: make([]acctPlan, cfg.Accounts), bases: make([]int, cfg.Accounts), active: make([][]int32, n)}
	for a, d := range drafts {
		base := max(1, d.weight*scale)
		pl := acctPlan{first: n, seats: make([]int, n), lo: make([]int, n), hi: make([]int, n), engage: d.seg.engage}
		lo := 0
		for q := range n {
			if d.seg.seats[q] == 0 {
				continue
			}
			pl.first = min(pl.first, q)
			pl.seats[q] = max(1, int(math.Round(base*d.seg.seats[q])))
			assigned := int(math.Round(base * d.seg.assigned[q]))
			if q > pl.first {
				lo += int(math.Round(float64(pl.hi[q-1]-pl.lo[q-1]) * d.seg.turnover))
			}
			pl.lo[q], pl.hi[q] = lo, lo+assigned
			pl.pool = max(pl.pool, pl.hi[q])
		}
		pl.pool = max(pl.pool, 1)
		p.bases[a] = p.users
		p.users += pl.pool
		p.plans[a] = pl
	}
	for q := range n {
		for a := range p.plans {
			pl := &p.plans[a]
			if q < pl.first {
				continue
			}
			for u := range pl.pool {
				chance := 0.01 // left the account
				switch {
				case u >= pl.lo[q] && u < pl.hi[q]:
					chance = pl.engage[q]
				case u >= pl.hi[q]:
					chance = 0.05 // no seat (yet)
				}
				if r.Float64() < chance {
					p.active[q] = append(p.active[q], int32(p.bases[a]+u))
				}
			}
		}
		if len(p.active[q]) == 0 {
			p.active[q] = append(p.active[q], 0)
		}
	}
	p.period = -1
	return p
}

// changes returns the seat changes that take the plans from the end of
// period q−1 to the end of period q, accounts interleaved at random and
// each account's changes in order.
func (p *population) changes(q int, r *rand.Rand) []seatChange {
	var per [][]seatChange
	for a := range p.plans {
		pl := &p.plans[a]
		if q < pl.first {
			continue
		}
		var cs []seatChange
		add := func(kind uint8, from, to int) {
			for u := from; u < to; u++ {
				cs = append(cs, seatChange{account: int32(a), user: int32(p.bases[a] + u), kind: kind})
			}
		}
		purchase := seatChange{account: int32(a), kind: changePurchase, seats: int32(pl.seats[q])}
		prevSeats, lo, hi := 0, 0, 0
		if q > pl.first {
			prevSeats, lo, hi = pl.seats[q-1], pl.lo[q-1], pl.hi[q-1]
		}
		if pl.seats[q] > prevSeats {
			cs = append(cs, purchase)
		}
		add(changeUnassign, lo, min(hi, pl.lo[q]))
		add(changeUnassign, max(pl.hi[q], lo), hi)
		add(changeAssign, max(pl.lo[q], hi), pl.hi[q])
		add(changeAssign, pl.lo[q], min(pl.hi[q], lo))
		if pl.seats[q] < prevSeats {
			cs = append(cs, purchase)
		}
		if len(cs) > 0 {
			per = append(per, cs)
		}
	}
	var tokens []int32
	for i, cs := range per {
		for range cs {
			tokens = append(tokens, int32(i))
		}
	}
	r.Shuffle(len(tokens), func(i, j int) { tokens[i], tokens[j] = tokens[j], tokens[i] })
	out := make([]seatChange, 0, len(tokens))
	for _, i := range tokens {
		out = append(out, per[i][0])
		per[i] = per[i][1:]
	}
	return out
}

// anyUser returns a random account and a random user of its pool.
func (p *population) anyUser(r *rand.Rand) (account, user int) {
	a := r.IntN(len(p.plans))
	return a, p.bases[a] + r.IntN(p.plans[a].pool)
}

// accountOf returns the account of global user index u.
func (p *population) accountOf(u int) int {
	return sort.Search(len(p.bases), func(a int) bool { return p.bases[a] > u }) - 1
}

// realisticEvent returns the valid event at the current stream position:
// a due seat change, else a login or feature use by an active user.
func (g *Generator) realisticEvent() (string, doc) {
	p := g.pop
	if g.emitted >= p.end {
		q, end := g.periodAt(g.emitted)
		for p.period < q {
			p.period++
			p.queue = append(p.queue[p.sent:], p.changes(p.period, g.rng)...)
			p.sent, p.start = 0, g.emitted
		}
		p.end = end
	}
	q := p.period
	from, to := p.periodMs[q], p.periodMs[q+1]
	occurred := func() int64 { return min(max(g.occurredMs(), from), to-1) }
	j, slots := g.emitted-p.start+1, p.end-p.start
	due := min(len(p.queue), int(math.Ceil(float64(len(p.queue))*float64(j)/(0.8*float64(slots)))), (j+1)/2)
	if p.sent < due {
		c := p.queue[p.sent]
		p.sent++
		a := int(c.account)
		switch c.kind {
		case changePurchase:
			return g.accounts[a], g.eventDoc("seats_purchased", a, 0, occurred, func() int { return int(c.seats) })
		case changeAssign:
			return g.accounts[a], g.eventDoc("seat_assigned", a, int(c.user), occurred, nil)
		default:
			return g.accounts[a], g.eventDoc("seat_unassigned", a, int(c.user), occurred, nil)
		}
	}
	active := p.active[q]
	u := int(active[g.rng.IntN(len(active))])
	a := p.accountOf(u)
	typ := "feature_used"
	if g.rng.IntN(88) < 45 {
		typ = "login"
	}
	return g.accounts[a], g.eventDoc(typ, a, u, g.occurredMs, nil)
}

// periodAt returns the period of stream position i (by the nominal
// occurred_at that occurredMs jitters) and the first position after it.
func (g *Generator) periodAt(i int) (period, end int) {
	events := max(g.cfg.Events, 1)
	span := g.endMs - g.startMs
	at := func(k int) int64 { return g.startMs + int64(float64(span)*float64(k)/float64(events)) }
	ms := g.pop.periodMs
	q := sort.Search(len(ms)-2, func(q int) bool { return ms[q+1] > at(i) })
	end = i + sort.Search(events-i, func(k int) bool { return at(i+k) >= ms[q+1] })
	return q, max(end, i+1)
}
