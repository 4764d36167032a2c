package schema

import (
	"testing"
	"time"
)

// TestVersionKinds: live and recompute versions are told apart, a live row
// wins against a recompute of the same second and loses against one of a
// later second, and its writer reads back.
func TestVersionKinds(t *testing.T) {
	for _, sec := range []uint32{1, 1_800_000_000, ^uint32(0) - 1} {
		for _, w := range []uint16{0, 1, 1234, writerMask} {
			for range 200 {
				lv, rv, next := liveVersion(sec, w), recomputeVersion(sec), recomputeVersion(sec+1)
				if !IsLive(lv) || IsLive(rv) || IsLive(next) {
					t.Fatalf("IsLive: live %x %v, recompute %x %v", lv, IsLive(lv), rv, IsLive(rv))
				}
				if lv <= rv || lv >= next {
					t.Fatalf("order at second %d: recompute %x, live %x, next recompute %x", sec, rv, lv, next)
				}
				if liveWriter(lv) != w || lv>>32 != uint64(sec) || rv>>32 != uint64(sec) {
					t.Fatalf("fields of live %x: writer %d, want %d", lv, liveWriter(lv), w)
				}
			}
		}
	}
}

// TestServedAtLiveRows: what Stale takes as a greatest row's updated_at.
// A recompute row is its updated_at; a live row satisfies no mark (0),
// except, in a serve loop (LiveConfirmAge set), another writer's that is
// younger than the age, which satisfies every mark (its writer confirms
// it).
func TestServedAtLiveRows(t *testing.T) {
	const now = 1_800_000_000
	strict := &Served{}
	loop := &Served{LiveWriter: 7, LiveConfirmAge: 3 * time.Minute}
	cases := []struct {
		name    string
		s       *Served
		version uint64
		want    uint32
	}{
		{"recompute", loop, recomputeVersion(now - 5), 12345},
		{"own live row", loop, liveVersion(now-5, 7), 0},
		{"another writer's young live row", loop, liveVersion(now-5, 8), ^uint32(0)},
		{"another writer's old live row", loop, liveVersion(now-180, 8), 0},
		{"strict: any live row", strict, liveVersion(now-5, 8), 0},
		{"strict: recompute", strict, recomputeVersion(now - 5), 12345},
	}
	for _, c := range cases {
		if got := c.s.servedAt(12345, c.version, now); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}
