package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// The embedded Kafka's data directory is locked while a daemon uses it: two
// kfake clusters writing one directory would corrupt its log without a
// word. The lock is an advisory lock (flock) on the file LOCK in the
// directory, which the kernel releases when the process ends however it
// ends, so the lock of a killed daemon never blocks the next one. The file
// names its holder (pid, program, start time) for the error of a second
// daemon; that content is only informative, and stale after a kill.

// lockFileName is the lock file's name in the data directory.
const lockFileName = "LOCK"

// errLocked is lockFile's error when another open file holds the lock.
var errLocked = errors.New("locked by another process")

// lockHolder is what a lock file says of the process that holds it.
type lockHolder struct {
	PID     int       `json:"pid"`
	Program string    `json:"program"`
	Since   time.Time `json:"since"`
}

// dataDirInUseError is lockDataDir's error when another process holds the
// directory's lock.
type dataDirInUseError struct {
	dir string
	// holder is the zero value when the lock file does not say (its
	// holder has not written it yet).
	holder lockHolder
}

func (e *dataDirInUseError) Error() string {
	who := "another process"
	if h := e.holder; h.PID > 0 {
		prog := h.Program
		if prog == "" {
			prog = "another process"
		}
		who = fmt.Sprintf("%s (pid %d, since %s)", prog, h.PID, h.Since.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("the data directory %s is in use by %s; stop it, or pass --data-dir with another directory", e.dir, who)
}

// dataDirLock is a held lock on a data directory.
type dataDirLock struct {
	f *os.File
}

// lockDataDir creates dir if needed and locks it for program, which started
// at since. It returns a *dataDirInUseError when another process (or another
// lock of this one) holds it, and another error when the lock file cannot
// be opened or locked.
func lockDataDir(dir, program string, since time.Time) (*dataDirLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		h := readHolder(f)
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, &dataDirInUseError{dir: dir, holder: h}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	b, _ := json.Marshal(lockHolder{PID: os.Getpid(), Program: program, Since: since.UTC().Truncate(time.Second)})
	if err := writeHolder(f, append(b, '\n')); err != nil {
		f.Close() // which releases the lock
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return &dataDirLock{f: f}, nil
}

// release empties the lock file, whose holder is gone, and releases the
// lock. The file stays: removing it would let a process that opened it
// just before lock a file no longer in the directory, beside one that
// creates a new one.
func (l *dataDirLock) release() {
	_ = l.f.Truncate(0)
	_ = l.f.Close()
}

// readHolder reads the holder a lock file names, or the zero value.
func readHolder(f *os.File) lockHolder {
	var h lockHolder
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 4096))
	if err == nil {
		_ = json.Unmarshal(b, &h)
	}
	return h
}

// writeHolder replaces the lock file's content with b.
func writeHolder(f *os.File, b []byte) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt(b, 0)
	return err
}
