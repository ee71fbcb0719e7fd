package test

import "syscall"

// sysProcAttr makes the kernel kill a child when the test binary dies, so
// that a killed test leaves no broker or sagad behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
