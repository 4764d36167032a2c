package dedup

import (
	"runtime"
	"sync/atomic"
	"unsafe"
)

// mapped is the size of every table mapping of the process (MappedBytes).
var mapped atomic.Int64

// MappedBytes returns the bytes of all Sets' tables that live outside the Go
// heap, in this process. GOMEMLIMIT does not see them: cmd/usagepipe lowers
// the heap's limit by this much, and ingest exports it as a metric.
func MappedBytes() int64 { return mapped.Load() }

// mmapMinBytes is the smallest table kept outside the Go heap (see
// newTable); smaller ones are ordinary slices.
const mmapMinBytes = 1 << 20

// table owns a Set's slot array. A large one lives in an anonymous memory
// mapping outside the Go heap: it holds no pointers, lives as long as its
// Set, and is the largest state usagepipe keeps, so on the heap it would
// only raise the garbage collector's heap goal (GOGC=100: twice the live
// heap) by twice its size for nothing. Outside the heap it costs its own
// size. A table is unmapped when the Set replaces it, and by a cleanup
// when the Set becomes unreachable.
type table struct {
	mem []byte // the mapping; nil for a table on the Go heap
}

// newTable returns n zeroed slots. Mapped pages are populated up front
// (MAP_POPULATE), in one pass: probes then never read a page before it is
// written, which would map the shared zero page first and fault again on
// the write.
func newTable(n int) ([]entry, *table) {
	size := n * int(unsafe.Sizeof(entry{}))
	if size >= mmapMinBytes {
		if mem, err := mapAnon(size); err == nil {
			mapped.Add(int64(len(mem)))
			return unsafe.Slice((*entry)(unsafe.Pointer(unsafe.SliceData(mem))), n), &table{mem: mem}
		}
	}
	tab := make([]entry, n)
	// Write every page of a fresh table in order before the scattered
	// inserts, for the same reason as MAP_POPULATE above.
	clear(tab)
	return tab, &table{}
}

// free unmaps t's mapping; its slots must not be used afterwards. It is
// safe on a nil or already freed table.
func (t *table) free() {
	if t != nil && t.mem != nil {
		unmap(t.mem)
		mapped.Add(-int64(len(t.mem)))
		t.mem = nil
	}
}

// owner is the Set's current table, in its own heap object so that the
// Set's cleanup can reach it without keeping the Set alive.
type owner struct{ t *table }

func (s *Set) setTable(n int) {
	tab, t := newTable(n)
	if s.own == nil {
		s.own = &owner{}
		runtime.AddCleanup(s, func(o *owner) { o.t.free() }, s.own)
	}
	old := s.own.t
	s.own.t = t
	s.tab = tab
	if old != nil {
		old.free()
	}
}
