package store

import (
	"testing"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
)

func TestMonthDate(t *testing.T) {
	for mi := schema.MinMonth; mi <= schema.MaxMonth; mi++ {
		if got, want := monthDate(mi), quarter.MonthStart(mi); !got.Equal(want) || got.Location() != want.Location() {
			t.Fatalf("monthDate(%d) = %v, want %v", mi, got, want)
		}
	}
}
