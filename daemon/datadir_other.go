//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package daemon

import (
	"os"
	"runtime"
)

// lockFile is the best effort of platforms without flock (Windows among
// them): f is taken as locked when it names a holder that is this process
// or a process that still exists. Two daemons starting at the same moment
// can both pass it, and a new process that reuses a dead holder's pid
// blocks the directory (the error says how to choose another); the Unix
// lock has neither flaw.
func lockFile(f *os.File) error {
	h := readHolder(f)
	switch {
	case h.PID <= 0:
		return nil
	case h.PID == os.Getpid() || processExists(h.PID):
		return errLocked
	}
	return nil
}

// processExists reports whether process pid exists, where the platform
// can tell: on Windows os.FindProcess opens the process, and fails when
// there is none. Elsewhere it reports false, so a stale lock file never
// blocks.
func processExists(pid int) bool {
	if runtime.GOOS != "windows" {
		return false
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	_ = p.Release()
	return true
}
