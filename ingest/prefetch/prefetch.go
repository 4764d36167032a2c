// Package prefetch asks the CPU to start loading memory that will be read
// soon, so that the cache miss overlaps other work instead of stalling it.
// It is a hint: it changes no value, and it does nothing on architectures
// where no prefetch instruction is wired up. Safe for concurrent use; no
// metrics.
package prefetch
