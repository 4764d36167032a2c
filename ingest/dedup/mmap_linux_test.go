//go:build linux

package dedup

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// TestLargeTableOutsideHeap checks that a large table lives in its own
// mapping (the Go heap does not grow by it), works, is replaced by a heap
// slice when sweeps shrink it, and that a dropped Set's mapping is unmapped.
func TestLargeTableOutsideHeap(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := New(time.Hour)
	s.Reserve(1 << 20) // 2^21 slots, 48 MiB
	runtime.ReadMemStats(&after)
	size := len(s.tab) * int(unsafe.Sizeof(entry{}))
	// Other Sets' mappings (earlier tests) may be unmapped by their
	// cleanups meanwhile: MappedBytes only ever falls for them.
	if got := MappedBytes(); got < int64(size) {
		t.Fatalf("MappedBytes = %d with a %d-byte table mapped", got, size)
	}
	if s.own.t.mem == nil || unsafe.Pointer(&s.tab[0]) != unsafe.Pointer(&s.own.t.mem[0]) || len(s.own.t.mem) != size {
		t.Fatalf("a %d-byte table is not its own mapping", size)
	}
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > int64(size)/8 {
		t.Fatalf("the Go heap grew by %d bytes for a %d-byte table", grew, size)
	}
	for i := range 1000 {
		if s.Check(fmt.Appendf(nil, "id-%d", i), 0, int64(i)) {
			t.Fatalf("id %d: a new ID is a duplicate", i)
		}
	}
	for i := range 1000 {
		if !s.Check(fmt.Appendf(nil, "id-%d", i), 1, int64(1<<20+i)) {
			t.Fatalf("id %d not found in the mapped table", i)
		}
	}
	// Far later timestamps: the sweep forgets every ID and shrinks the
	// table back under mmapMinBytes, onto the heap.
	mappedBefore := MappedBytes()
	for ts := int64(1); len(s.tab)*int(unsafe.Sizeof(entry{})) >= mmapMinBytes; ts++ {
		s.Check(fmt.Appendf(nil, "late-%d", ts), ts*s.keep*2, int64(1<<22)+ts)
	}
	if s.own.t.mem != nil {
		t.Fatalf("a %d-slot table is still mapped", len(s.tab))
	}
	if fell := mappedBefore - MappedBytes(); fell < int64(size) {
		t.Fatalf("MappedBytes fell by %d when a %d-byte table was unmapped", fell, size)
	}

	// A dropped Set's mapping is unmapped by its cleanup: its address
	// leaves /proc/self/maps.
	s2 := New(time.Hour)
	s2.Reserve(1 << 18)
	if s2.own.t.mem == nil {
		t.Fatal("a 12 MiB table is not mapped")
	}
	addr := uintptr(unsafe.Pointer(&s2.own.t.mem[0]))
	// Whether any mapping covers addr: neighbouring mappings may be merged
	// into one line, so look for a range holding it, not for its start.
	mapped := func() bool {
		maps, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(maps)) {
			var lo, hi uintptr
			if _, err := fmt.Sscanf(line, "%x-%x", &lo, &hi); err == nil && lo <= addr && addr < hi {
				return true
			}
		}
		return false
	}
	if !mapped() {
		t.Fatalf("no mapping covers %#x in /proc/self/maps", addr)
	}
	s2 = nil
	deadline := time.Now().Add(10 * time.Second)
	for mapped() {
		if time.Now().After(deadline) {
			t.Fatal("the mapping of an unreachable Set was not unmapped")
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}
