package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// TestMain takes the machine-wide lock of the suites that start servers
// (localstack.LockMachine), so that `go test ./...` runs this suite's
// Prometheus servers and apps apart from the e2e and faults stacks.
func TestMain(m *testing.M) {
	unlock, err := localstack.LockMachine("integration", os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	unlock()
	os.Exit(code)
}
