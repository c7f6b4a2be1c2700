package localstack

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// LockFile is the machine-wide lock the suites that start real servers
// take (Suite.Run, and the integration suite): `go test ./...` runs test
// packages side by side, and two local stacks on a small machine starve
// each other (a load generator that cannot deliver its load, an HPA that
// syncs late). With the lock they run one after the other.
var LockFile = filepath.Join(os.TempDir(), "custom-metrics-adapter-localstack.lock")

// LockMachine takes the machine-wide lock for suite, waiting for the suite
// that holds it, and saying so on w. unlock releases it (the lock is
// released too when the process ends, however it ends).
func LockMachine(suite string, w io.Writer) (unlock func(), err error) {
	f, err := os.OpenFile(LockFile, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the machine-wide lock %s: %w", LockFile, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(LockFile)
		start := time.Now()
		fmt.Fprintf(w, "%s: waiting for %s, which holds the local-stack lock %s (suites that start servers run one at a time)\n",
			suite, describeHolder(string(holder)), LockFile)
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("taking the machine-wide lock %s: %w", LockFile, err)
		}
		fmt.Fprintf(w, "%s: took the local-stack lock after %s\n", suite, time.Since(start).Round(time.Second))
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(fmt.Sprintf("%s (pid %d)", suite, os.Getpid())), 0)
	}
	return func() {
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}

func describeHolder(s string) string {
	if s = strings.TrimSpace(s); s == "" {
		return "another suite"
	}
	return "suite " + s
}
