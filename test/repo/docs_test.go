package repo

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// configTypes are exempt from naming: a package's Config (or
// ControllerConfig) is the configuration of the type its doc names.
func configType(name string) bool { return strings.HasSuffix(name, "Config") }

// TestPackageDocsNameWhatTheyHold: every package of the product
// (pkg/, internal/, cmd/, app/) has a doc comment that starts "Package
// NAME" (or "Command" for a main package) and mentions each exported type
// it declares, but its configuration (configType): a reader learns from
// the doc what the package holds, and a type added without a word in it
// fails here.
func TestPackageDocsNameWhatTheyHold(t *testing.T) {
	r := root(t)
	for _, top := range []string{"pkg", "internal", "cmd", "app"} {
		err := filepath.WalkDir(filepath.Join(r, top), func(dir string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() || d.Name() == "testdata" {
				return err
			}
			pkgs, err := parseDir(dir)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(r, dir)
			for name, files := range pkgs {
				doc := ""
				for _, f := range files {
					if f.Doc != nil {
						doc += f.Doc.Text()
					}
				}
				want := "Package " + name
				if name == "main" {
					want = "Command "
				}
				if !strings.HasPrefix(doc, want) {
					t.Errorf("%s: the package doc does not start %q", rel, want)
					continue
				}
				for _, f := range files {
					for _, decl := range f.Decls {
						g, ok := decl.(*ast.GenDecl)
						if !ok || g.Tok != token.TYPE {
							continue
						}
						for _, spec := range g.Specs {
							ts := spec.(*ast.TypeSpec)
							if ts.Name.IsExported() && !configType(ts.Name.Name) && !strings.Contains(doc, ts.Name.Name) {
								t.Errorf("%s: the package doc does not mention its type %s", rel, ts.Name.Name)
							}
						}
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// parseDir parses the Go files of dir, but its tests, by package name.
func parseDir(dir string) (map[string][]*ast.File, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	out := map[string][]*ast.File{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		out[f.Name.Name] = append(out[f.Name.Name], f)
	}
	return out, nil
}
