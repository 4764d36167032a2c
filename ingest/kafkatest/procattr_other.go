//go:build !linux

package kafkatest

import "syscall"

// setDeathSignal does nothing where there is no parent-death signal; Main
// still stops the broker when the tests end.
func setDeathSignal(*syscall.SysProcAttr) {}
