package main

import "syscall"

// sysProcAttr makes the kernel kill a child when the harness dies, so that
// a killed harness leaves no broker, Redis or sagad behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
