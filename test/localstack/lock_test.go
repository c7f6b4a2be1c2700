package localstack

import (
	"bytes"
	"flag"
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

// A suite's -timeout and -parallel apply unless the command line gives
// others; go test's own default -timeout (10m, which it passes to every
// test binary) is not one.
func TestSuiteTestFlags(t *testing.T) {
	for _, name := range []string{"test.timeout", "test.parallel"} {
		old := flag.Lookup(name).Value.String()
		t.Cleanup(func() { _ = flag.Set(name, old) })
	}
	given := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { given[f.Name] = true })
	su := Suite{Name: "e2e", TestTimeout: 40 * time.Minute, Parallel: 12}
	if err := su.testFlags(); err != nil {
		t.Fatal(err)
	}
	if got := flag.Lookup("test.parallel").Value.String(); !given["test.parallel"] && got != "12" {
		t.Errorf("-test.parallel = %s, want the suite's 12", got)
	}
	timeout := flag.Lookup("test.timeout").Value.String()
	if timeout != "10m0s" && timeout != "40m0s" && !given["test.timeout"] {
		t.Errorf("-test.timeout = %s", timeout)
	}
	if err := flag.Set("test.timeout", "10m0s"); err != nil {
		t.Fatal(err)
	}
	if err := su.testFlags(); err != nil {
		t.Fatal(err)
	}
	if got := flag.Lookup("test.timeout").Value.String(); got != "40m0s" {
		t.Errorf("after go test's default 10m, -test.timeout = %s, want the suite's 40m", got)
	}
}
