package e2e

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/store"
)

// TestInsertOrder measures what row order costs ClickHouse on insert: the
// same user-activity and feature-use rows (gen-like: 10k accounts, 300k
// users, 6 months, 40 features) written in random order, as two sorted
// runs (what two workers drained separately would give), and in the
// tables' ORDER BY order (what aggregate.DrainAll gives), each into a
// fresh database, three rounds. It reports ClickHouse's CPU per row and
// checks every row arrived.
//
//	/tmp/e2e.test -test.v -test.run '^TestInsertOrder$'
func TestInsertOrder(t *testing.T) {
	if env.chPID == 0 {
		t.Fatal("needs the private ClickHouse server (no -bench.clickhouse): its CPU is measured from /proc")
	}
	const n = 730_000 // rows per table: one flush of the 2M-event backfill
	rng := rand.New(rand.NewPCG(1, 2))
	var shuffled schema.Facts
	for i := range n {
		a := fmt.Sprintf("acct-%06d", rng.IntN(10000))
		u := fmt.Sprintf("user-%07d", rng.IntN(300000))
		m := int32(2026*12 + rng.IntN(6))
		shuffled.UserActivity = append(shuffled.UserActivity, schema.UserActivity{Account: a, User: u, Month: m, LastMs: 1_767_225_600_000 + int64(i)})
		shuffled.FeatureUsers = append(shuffled.FeatureUsers, schema.FeatureUser{Account: a, Feature: fmt.Sprintf("feature-%02d", rng.IntN(40)), User: u, Month: m})
	}
	ua := func(x, y schema.UserActivity) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month), cmp.Compare(x.User, y.User))
	}
	fu := func(x, y schema.FeatureUser) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month), cmp.Compare(x.Feature, y.Feature), cmp.Compare(x.User, y.User))
	}
	sorted := schema.Facts{UserActivity: slices.Clone(shuffled.UserActivity), FeatureUsers: slices.Clone(shuffled.FeatureUsers)}
	slices.SortFunc(sorted.UserActivity, ua)
	slices.SortFunc(sorted.FeatureUsers, fu)
	var twoRuns schema.Facts // accounts ending in an even digit, then odd, each run sorted
	for _, odd := range []byte{0, 1} {
		for _, r := range sorted.UserActivity {
			if r.Account[len(r.Account)-1]%2 == odd {
				twoRuns.UserActivity = append(twoRuns.UserActivity, r)
			}
		}
		for _, r := range sorted.FeatureUsers {
			if r.Account[len(r.Account)-1]%2 == odd {
				twoRuns.FeatureUsers = append(twoRuns.FeatureUsers, r)
			}
		}
	}

	ctx := context.Background()
	orders := []struct {
		name string
		f    *schema.Facts
	}{{"random", &shuffled}, {"two sorted runs", &twoRuns}, {"ORDER BY order", &sorted}}
	perRow := map[string][]float64{}
	for round := range 3 {
		for _, o := range orders {
			db := fmt.Sprintf("insert_order_%d_%d", round, len(perRow[o.name]))
			st, err := store.Open(ctx, store.Config{Addr: []string{env.chAddr}, Database: db}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db}, nil); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // let the DDL's own work settle
			cpu0 := procCPU(env.chPID)
			if err := st.Write(ctx, o.f); err != nil {
				t.Fatal(err)
			}
			cpu := procCPU(env.chPID) - cpu0
			var got uint64
			if err := st.Conn().QueryRow(ctx, "SELECT (SELECT count() FROM "+db+".fact_user_activity) + (SELECT count() FROM "+db+".fact_feature_users)").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != 2*n {
				t.Fatalf("%s: %d rows stored, want %d", o.name, got, 2*n)
			}
			perRow[o.name] = append(perRow[o.name], float64(cpu.Nanoseconds())/(2*n))
			_ = st.Conn().Exec(ctx, "DROP DATABASE "+db)
			st.Close()
		}
	}
	for _, o := range orders {
		v := slices.Sorted(slices.Values(perRow[o.name]))
		t.Logf("%-16s ClickHouse CPU per inserted row: median %.0f ns (rounds: %.0f)", o.name, v[len(v)/2], perRow[o.name])
	}
}
