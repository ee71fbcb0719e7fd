package redistest

import "os"

// Signal sends sig to the server's process: syscall.SIGSTOP makes it hang
// (connections stay open, nothing is answered) until syscall.SIGCONT.
func (s *Server) Signal(sig os.Signal) error { return s.cmd.Process.Signal(sig) }
