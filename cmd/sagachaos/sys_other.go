//go:build !linux

package main

import "syscall"

// sysProcAttr has no parent-death signal outside Linux: stop a killed
// harness's children by hand.
func sysProcAttr() *syscall.SysProcAttr { return nil }
