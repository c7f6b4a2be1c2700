package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Parse decodes a rules file. source names the file in errors. Unknown
// keys are errors naming the file, the line and the key, with the known
// key it most likely meant. The rules themselves are checked by compiling
// them (rules.CompileSet).
func Parse(data []byte, source string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if root.Kind == 0 || (root.Kind == yaml.DocumentNode && len(root.Content) == 0) {
		return nil, fmt.Errorf("%s: the file is empty; it needs at least one entry under rules", source)
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, decodeError(err, source, doc)
	}
	if len(c.Rules) == 0 && len(c.ExternalRules) == 0 && c.ResourceRules == nil {
		// An adapter that serves nothing looks healthy and fails every
		// HPA: refuse to start instead.
		return nil, fmt.Errorf("%s: no rules, externalRules or resourceRules: there is nothing to serve", source)
	}
	c.source, c.doc = source, doc
	return &c, nil
}

// Source names the file the config was read from.
func (c *Config) Source() string { return c.source }

// Where names section[i].field with the file and the line it is on, as
// errors say it: "rules.yaml:12: rules[0].metricsQuery". i < 0 means
// section is a mapping (resourceRules) and field a path inside it; field
// may be dotted and indexed (resources.aggregateFromPods[1]).
func (c *Config) Where(section string, i int, field string) string {
	path := fmt.Sprintf("%s[%d].%s", section, i, field)
	if i < 0 {
		path = section + "." + field
	}
	line := 0
	if c.doc != nil {
		line = lineOf(c.doc, section, i, field)
	}
	return fmt.Sprintf("%s:%d: %s", c.source, line, path)
}

// unknownField is yaml's message for a key the type does not have.
var unknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (\S+)$`)

// decodeError turns the decoder's errors into ones that name the file:
// an unknown key with its path and the known key it most likely meant.
func decodeError(err error, source string, doc *yaml.Node) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("%s: %w", source, err)
	}
	errs := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		m := unknownField.FindStringSubmatch(msg)
		if m == nil {
			errs = append(errs, fmt.Errorf("%s: %s", source, msg))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		path := m[2]
		if p, ok := keyPath(doc, line, m[2], ""); ok {
			path = p
		}
		msg := fmt.Sprintf("%s:%d: %s: unknown field", source, line, path)
		names := fieldNames(m[3])
		if s := closest(m[2], names); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		} else if len(names) > 0 {
			msg += fmt.Sprintf(" (known fields: %s)", strings.Join(names, ", "))
		}
		errs = append(errs, errors.New(msg))
	}
	return errors.Join(errs...)
}

// keyPath finds the key named key on line in the tree and returns its path
// (rules[0].resources.overrides.pod.grop).
func keyPath(n *yaml.Node, line int, key, path string) (string, bool) {
	switch n.Kind {
	case yaml.MappingNode:
		for j := 0; j+1 < len(n.Content); j += 2 {
			k := n.Content[j]
			child := k.Value
			if path != "" {
				child = path + "." + k.Value
			}
			if k.Line == line && k.Value == key {
				return child, true
			}
			if p, ok := keyPath(n.Content[j+1], line, key, child); ok {
				return p, true
			}
		}
	case yaml.SequenceNode:
		for j, c := range n.Content {
			if p, ok := keyPath(c, line, key, fmt.Sprintf("%s[%d]", path, j)); ok {
				return p, true
			}
		}
	}
	// Aliases are not followed: a key's line is where it is written, and
	// an alias may point back at its own anchor.
	return "", false
}

// configTypes are the types of the file, by the name yaml's errors give.
var configTypes = func() map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for _, t := range []reflect.Type{
		reflect.TypeFor[Config](), reflect.TypeFor[Rule](), reflect.TypeFor[RegexFilter](), reflect.TypeFor[ResourceMapping](),
		reflect.TypeFor[GroupResource](), reflect.TypeFor[NameMapping](), reflect.TypeFor[LabelValueReplacement](),
		reflect.TypeFor[ResourceRules](), reflect.TypeFor[ResourceRule](),
		reflect.TypeFor[Backend](), reflect.TypeFor[BackendTLS](), reflect.TypeFor[BackendAuth](), reflect.TypeFor[BasicAuth](),
	} {
		out[t.String()] = t
	}
	return out
}()

// fieldNames lists the keys of a type of the file, in their order.
func fieldNames(typeName string) []string {
	t, ok := configTypes[typeName]
	if !ok {
		return nil
	}
	var names []string
	for k := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(k).Tag.Get("yaml"), ",")
		if name != "" && name != "-" && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// lineOf finds the line of section[i].field (field may be dotted) in the
// document, falling back to the closest enclosing node.
func lineOf(doc *yaml.Node, section string, i int, field string) int {
	key, n := mapEntry(doc, section)
	if n == nil {
		return doc.Line
	}
	line := key.Line
	if i >= 0 {
		if n.Kind != yaml.SequenceNode || i >= len(n.Content) {
			return n.Line
		}
		n = n.Content[i]
		line = n.Line
	}
	path := strings.Split(field, ".")
	for _, p := range path {
		name, idx, hasIdx := strings.Cut(strings.TrimSuffix(p, "]"), "[")
		key, value := mapEntry(n, name)
		if key == nil {
			return line
		}
		line = key.Line
		n = value
		if hasIdx && n != nil && n.Kind == yaml.SequenceNode {
			var k int
			if _, err := fmt.Sscan(idx, &k); err == nil && k < len(n.Content) {
				n = n.Content[k]
				line = n.Line
			}
		}
		if n == nil {
			return line
		}
	}
	return line
}

// mapEntry returns the key and value nodes of key in the mapping n, or
// nils when n is not a mapping or has no such key.
func mapEntry(n *yaml.Node, key string) (k, v *yaml.Node) {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for j := 0; j+1 < len(n.Content); j += 2 {
		if n.Content[j].Value == key {
			return n.Content[j], n.Content[j+1]
		}
	}
	return nil, nil
}

// closest returns the known name nearest to key when it is a likely typo.
func closest(key string, names []string) string {
	best, bestDist := "", 3
	for _, n := range names {
		if d := editDistance(strings.ToLower(key), strings.ToLower(n)); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
