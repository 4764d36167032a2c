//go:build !amd64

package prefetch

import "unsafe"

// Addr does nothing where no prefetch instruction is wired up.
func Addr(unsafe.Pointer) {}
