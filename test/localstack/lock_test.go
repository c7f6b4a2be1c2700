package localstack

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// A suite that finds the lock taken waits for it, says for whom, and
// takes it once the holder lets go.
func TestLockMachineRunsSuitesOneAtATime(t *testing.T) {
	old := LockFile
	LockFile = filepath.Join(t.TempDir(), "lock")
	t.Cleanup(func() { LockFile = old })

	unlockA, err := LockMachine("e2e", &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
	took := make(chan func())
	go func() {
		unlockB, err := LockMachine("faults", w)
		if err != nil {
			t.Error(err)
		}
		took <- unlockB
	}()
	select {
	case <-took:
		t.Fatal("the second suite took the lock the first holds")
	case <-time.After(300 * time.Millisecond):
	}
	mu.Lock()
	said := out.String()
	mu.Unlock()
	if want := fmt.Sprintf("faults: waiting for suite e2e (pid %d)", os.Getpid()); !strings.Contains(said, want) {
		t.Errorf("the waiting suite said %q, want %q", said, want)
	}
	unlockA()
	select {
	case unlockB := <-took:
		unlockB()
	case <-time.After(10 * time.Second):
		t.Fatal("the second suite never took the lock once it was free")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
