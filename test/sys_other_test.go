//go:build !linux

package test

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
