package repo

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// hack/build-tools.sh, which make tools runs, builds only what is out of
// date, one after the other, and says which of how many is building and
// how long the one before took; two targets of one rule are built once.
func TestBuildToolsSaysWhichOfHowMany(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		requireOrSkip(t, "make is not on the PATH")
	}
	dir := t.TempDir()
	makefile := "a:\n\ttouch a\n" +
		"b c &:\n\ttouch b c\n" +
		"fresh:\n\ttouch fresh\n"
	if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte(makefile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "fresh"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root(t), "hack/build-tools.sh"), "a", "fresh", "b", "c")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MAKEFLAGS=", "MAKELEVEL=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// The durations are whatever the clock says: only their form is
	// checked.
	for _, want := range []string{
		`(?m)^>> \[1/3\] a$`,
		`(?m)^>> \[2/3\] b \(the previous, a, took \d+m\d\ds\)$`,
		`(?m)^>> \[3/3\] c: built with the previous$`,
		`(?m)^>> built 3 of 4 tools in \d+m\d\ds$`,
	} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("the output lacks a line matching %s:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "fresh") {
		t.Errorf("an up-to-date target was named:\n%s", out)
	}
	for _, f := range []string{"a", "b", "c"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s was not built: %v", f, err)
		}
	}
	// Nothing to do: nothing said.
	cmd = exec.CommandContext(ctx, filepath.Join(root(t), "hack/build-tools.sh"), "a", "b")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MAKEFLAGS=", "MAKELEVEL=")
	if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
		t.Errorf("with everything built: %v, %q; want no output", err, out)
	}
}
