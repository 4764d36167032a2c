package prefetch

import (
	"bytes"
	"testing"
	"unsafe"
)

// TestHintChangesNothing prefetches buffers of every length around the
// line size (including empty and unaligned ones) and checks that nothing
// panics and no byte changes.
func TestHintChangesNothing(t *testing.T) {
	for n := range 300 {
		b := make([]byte, n+3)
		for i := range b {
			b[i] = byte(i * 7)
		}
		want := bytes.Clone(b)
		Bytes(b[3:])
		if n > 0 {
			Addr(unsafe.Pointer(&b[n/2]))
		}
		if !bytes.Equal(b, want) {
			t.Fatalf("len %d: bytes changed", n)
		}
	}
}
