package prefetch

import (
	"bytes"
	"testing"
	"unsafe"
)

// TestHintChangesNothing prefetches addresses inside buffers of every
// length around the line size and checks that no byte changes.
func TestHintChangesNothing(t *testing.T) {
	for n := range 300 {
		b := make([]byte, n+3)
		for i := range b {
			b[i] = byte(i * 7)
		}
		want := bytes.Clone(b)
		if n > 0 {
			Addr(unsafe.Pointer(&b[n/2]))
		}
		if !bytes.Equal(b, want) {
			t.Fatalf("len %d: bytes changed", n)
		}
	}
}
