package repo

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixedDateMark is the comment that lets a literal date stand in Go code:
// it says why the date is never compared with the clock (a timestamp in a
// decoded answer, a query's range), on the line of the call or the line
// above it.
const fixedDateMark = "fixed date:"

// sourceFiles walks the repository's own files, not the built or run
// folders, and calls fn with each path relative to the root.
func sourceFiles(t *testing.T, fn func(rel, path string)) {
	t.Helper()
	r := root(t)
	err := filepath.WalkDir(r, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(r, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch rel {
			case ".git", "bin", "_output", "run", "tmp":
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			fn(rel, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A test that takes a calendar date for "now" passes until that date is
// behind it, then fails on every machine: a certificate valid for a day
// around time.Date(2026, 11, 27, ...) did exactly that. Every time.Date or
// time.Unix with a literal year or instant in the repository's Go code must
// say, with a "fixed date:" comment, why no clock ever reads it; times that
// are verified against a clock are taken from that clock (time.Now, or the
// fake clock the code under test reads).
func TestNoFixedDateStandsForNow(t *testing.T) {
	var found []string
	sourceFiles(t, func(rel, path string) {
		if !strings.HasSuffix(rel, ".go") {
			return
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return
		}
		marked := map[int]bool{} // lines a mark covers: its own and the next
		for _, g := range f.Comments {
			for _, c := range g.List {
				if strings.Contains(c.Text, fixedDateMark) {
					line := fset.Position(c.End()).Line
					marked[line], marked[line+1] = true, true
				}
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "time" || (sel.Sel.Name != "Date" && sel.Sel.Name != "Unix" && sel.Sel.Name != "UnixMilli") {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.INT || lit.Value == "0" {
				return true
			}
			pos := fset.Position(call.Pos())
			if !marked[pos.Line] {
				found = append(found, fmt.Sprintf("%s:%d: time.%s(%s, ...)", rel, pos.Line, sel.Sel.Name, lit.Value))
			}
			return true
		})
	})
	if len(found) > 0 {
		t.Errorf("literal dates without a %q comment saying why no clock reads them (take the time from the clock the code under test reads instead):\n  %s",
			fixedDateMark, strings.Join(found, "\n  "))
	}
}

// Certificates expire: tests and the local stack issue theirs at run time,
// valid relative to the clock, and none is committed.
func TestNoCommittedCertificates(t *testing.T) {
	sourceFiles(t, func(rel, path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Error(err)
			return
		}
		for rest := b; ; {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			if c, err := x509.ParseCertificate(block.Bytes); err == nil {
				t.Errorf("%s holds a certificate for %q valid until %s: issue it when the test runs, relative to the clock", rel, c.Subject.CommonName, c.NotAfter)
			}
		}
	})
}
