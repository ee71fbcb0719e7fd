package main

import "syscall"

// sysProcAttr makes the kernel kill a child when sagabench dies, so that a
// killed run leaves no redis-server or sagad behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
