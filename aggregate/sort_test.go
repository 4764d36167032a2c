package aggregate

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSortActsMatchesCompare checks sortActs against a plain sort by
// compare on logs whose hashes collide on purpose: equal top 48 bits with
// different low bits, and equal full hashes for different user names.
func TestSortActsMatchesCompare(t *testing.T) {
	hashes := []uint64{0x1234_5678_9abc_0001, 0x1234_5678_9abc_ffff, 0x1234_5678_9abc_0001 ^ 1<<40, 7, 1 << 63}
	for _, n := range []int{0, 1, 2, 5, 40, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(n), 9))
			a := New("t")
			acc := &account{name: "acme"}
			for range n {
				name := fmt.Sprintf("user-%d", rng.IntN(4))
				x := act{
					hash:  hashes[rng.IntN(len(hashes))],
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
					t.Fatalf("position %d: %+v (%s), want %+v (%s)", i, got[i], acc.user(&got[i]), want[i], acc.user(&want[i]))
				}
			}
		})
	}
}
