//go:build linux

package dedup

import "syscall"

func mapAnon(size int) ([]byte, error) {
	return syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE|syscall.MAP_POPULATE)
}

func unmap(mem []byte) { _ = syscall.Munmap(mem) }
