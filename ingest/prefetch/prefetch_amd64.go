package prefetch

import "unsafe"

// Addr hints the CPU to load the cache line at addr (PREFETCHT0).
//
//go:noescape
func Addr(addr unsafe.Pointer)
