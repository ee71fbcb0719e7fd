//go:build !linux

package main

import "syscall"

// sysProcAttr has no parent-death signal outside Linux: stop a killed run's
// children by hand. Memory and CPU figures, read from /proc, are missing
// there too.
func sysProcAttr() *syscall.SysProcAttr { return nil }
