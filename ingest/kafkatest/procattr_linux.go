package kafkatest

import "syscall"

// setDeathSignal makes the kernel kill the broker if the test binary dies
// without running Main's shutdown (a panic, a -timeout, a SIGKILL).
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
