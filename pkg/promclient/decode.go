package promclient

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// decodeQuery parses the body of a /api/v1/query answer whose result must
// be an instant vector: {"status":"success","data":{"resultType":"vector",
// "result":[{"metric":{...},"value":[ts,"v"]},...]},"warnings":[...],
// "infos":[...]}, and VictoriaMetrics' "isPartial":true, into its
// Annotations.
//
// It is a small hand-written parser for this one shape, because a vector
// of thousands of samples is the adapter's hot path, and client_golang's
// generic decoding (json-iterator, then encoding/json for every sample)
// took a third of the adapter's CPU at 200 samples per answer. It accepts
// what encoding/json accepts for this shape, ignores unknown keys, and
// returns a *v1.Error of type bad_response for anything else.
func decodeQuery(body []byte) (model.Vector, Annotations, error) {
	d := decoder{buf: body}
	var (
		status, errorType, errMsg, resultType string
		vec                                   model.Vector
		haveResult                            bool
		ann                                   Annotations
	)
	err := d.object(func(key []byte) error {
		switch name := fieldName(key, "status", "errorType", "error", "warnings", "infos", "isPartial", "data"); name {
		case "status":
			s, err := d.string()
			status = s
			return err
		case "errorType":
			s, err := d.string()
			errorType = s
			return err
		case "error":
			s, err := d.string()
			errMsg = s
			return err
		case "warnings", "infos":
			info := name == "infos"
			return d.array(func() error {
				s, err := d.string()
				ann.add(s, info)
				return err
			})
		case "isPartial":
			b, err := d.boolean()
			ann.Partial = ann.Partial || b
			return err
		case "data":
			return d.object(func(key []byte) error {
				switch fieldName(key, "resultType", "result") {
				case "resultType":
					s, err := d.string()
					resultType = s
					return err
				case "result":
					if resultType != "" && resultType != "vector" {
						return d.skip()
					}
					// A repeated key's last value counts, as with
					// encoding/json.
					haveResult, vec = true, nil
					return d.vector(&vec)
				default:
					return d.skip()
				}
			})
		default:
			return d.skip()
		}
	})
	if err == nil {
		d.space()
		if d.i != len(d.buf) {
			err = d.errorf("unexpected data after the answer")
		}
	}
	if err != nil {
		return nil, Annotations{}, &v1.Error{Type: v1.ErrBadResponse, Msg: err.Error()}
	}
	switch {
	case status == "error":
		return nil, ann, &v1.Error{Type: v1.ErrorType(errorType), Msg: errMsg}
	case status != "success":
		return nil, ann, &v1.Error{Type: v1.ErrBadResponse, Msg: fmt.Sprintf("answer with status %q", status)}
	case resultType != "vector":
		return nil, ann, &v1.Error{Type: v1.ErrBadResponse, Msg: fmt.Sprintf("query returned a %s, not an instant vector", resultType)}
	case !haveResult:
		return nil, ann, &v1.Error{Type: v1.ErrBadResponse, Msg: "answer without a result"}
	}
	if vec == nil {
		vec = model.Vector{}
	}
	return vec, ann, nil
}

// fieldName returns the name in names that key matches as encoding/json
// matches object keys to struct fields (exactly, else ignoring ASCII
// case), or "".
func fieldName(key []byte, names ...string) string {
	for _, n := range names {
		if string(key) == n {
			return n
		}
	}
	for _, n := range names {
		if len(key) == len(n) && foldEqual(key, n) {
			return n
		}
	}
	return ""
}

func foldEqual(b []byte, s string) bool {
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

type decoder struct {
	buf []byte
	i   int
}

func (d *decoder) errorf(format string, args ...any) error {
	return fmt.Errorf("malformed answer at byte %d: %s", d.i, fmt.Sprintf(format, args...))
}

func (d *decoder) space() {
	for d.i < len(d.buf) {
		switch d.buf[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// expect consumes c after optional white space.
func (d *decoder) expect(c byte) error {
	d.space()
	if d.i >= len(d.buf) || d.buf[d.i] != c {
		return d.errorf("want %q", c)
	}
	d.i++
	return nil
}

// peek returns the next byte after white space, or 0 at the end.
func (d *decoder) peek() byte {
	d.space()
	if d.i >= len(d.buf) {
		return 0
	}
	return d.buf[d.i]
}

// object calls member for each key, with the decoder at the key's value,
// which member must consume.
func (d *decoder) object(member func(key []byte) error) error {
	if d.peek() == 'n' {
		return d.null()
	}
	if err := d.expect('{'); err != nil {
		return err
	}
	if d.peek() == '}' {
		d.i++
		return nil
	}
	for {
		key, err := d.rawString()
		if err != nil {
			return err
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		if err := member(key); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.i++
		case '}':
			d.i++
			return nil
		default:
			return d.errorf("want ',' or '}' in an object")
		}
	}
}

// array calls elem for each element, with the decoder at it.
func (d *decoder) array(elem func() error) error {
	if d.peek() == 'n' {
		return d.null()
	}
	if err := d.expect('['); err != nil {
		return err
	}
	if d.peek() == ']' {
		d.i++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.i++
		case ']':
			d.i++
			return nil
		default:
			return d.errorf("want ',' or ']' in an array")
		}
	}
}

// boolean decodes true, false or null (false).
func (d *decoder) boolean() (bool, error) {
	d.space()
	for _, lit := range []string{"true", "false", "null"} {
		if len(d.buf)-d.i >= len(lit) && string(d.buf[d.i:d.i+len(lit)]) == lit {
			d.i += len(lit)
			return lit == "true", nil
		}
	}
	return false, d.errorf("want true or false")
}

func (d *decoder) null() error {
	d.space()
	if len(d.buf)-d.i >= 4 && string(d.buf[d.i:d.i+4]) == "null" {
		d.i += 4
		return nil
	}
	return d.errorf("want null")
}

// vector decodes the result array of an instant vector.
func (d *decoder) vector(vec *model.Vector) error {
	return d.array(func() error {
		s := &model.Sample{}
		var haveValue bool
		err := d.object(func(key []byte) error {
			switch fieldName(key, "metric", "value", "histogram") {
			case "metric":
				// A repeated "metric" adds to the labels, as encoding/json
				// decodes into the map it already has.
				if s.Metric == nil {
					s.Metric = model.Metric{}
				}
				m := s.Metric
				return d.object(func(name []byte) error {
					v, err := d.string()
					m[model.LabelName(name)] = model.LabelValue(v)
					return err
				})
			case "value":
				haveValue = true
				return d.samplePair(s)
			case "histogram":
				return d.errorf("native histogram samples are not supported: the rule's query must return float samples")
			default:
				return d.skip()
			}
		})
		if err != nil {
			return err
		}
		if !haveValue {
			return d.errorf("a sample without a value")
		}
		if s.Metric == nil {
			s.Metric = model.Metric{}
		}
		*vec = append(*vec, s)
		return nil
	})
}

// samplePair decodes [timestamp, "value"].
func (d *decoder) samplePair(s *model.Sample) error {
	if err := d.expect('['); err != nil {
		return err
	}
	ts, err := d.timestamp()
	if err != nil {
		return err
	}
	if err := d.expect(','); err != nil {
		return err
	}
	v, err := d.string()
	if err != nil {
		return err
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return d.errorf("sample value %q is not a number", v)
	}
	s.Timestamp, s.Value = ts, model.SampleValue(f)
	return d.expect(']')
}

// timestamp decodes seconds since the epoch, as Prometheus writes them
// (1700000000.123), into milliseconds: exactly for that form, through a
// float for any other.
func (d *decoder) timestamp() (model.Time, error) {
	d.space()
	start := d.i
	for d.i < len(d.buf) {
		c := d.buf[d.i]
		if (c < '0' || c > '9') && c != '.' && c != '-' && c != '+' && c != 'e' && c != 'E' {
			break
		}
		d.i++
	}
	num := string(d.buf[start:d.i])
	if sec, frac, ok := strings.Cut(num, "."); isDigits(sec) && (!ok || isDigits(frac)) {
		if s, err := strconv.ParseInt(sec, 10, 64); err == nil && s < math.MaxInt64/1000 {
			ms := s * 1000
			for k, scale := range []int64{100, 10, 1} {
				if k < len(frac) {
					ms += int64(frac[k]-'0') * scale
				}
			}
			return model.Time(ms), nil
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, d.errorf("timestamp %q is not a number", num)
	}
	return model.Time(math.Round(f * 1000)), nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// string decodes a JSON string.
func (d *decoder) string() (string, error) {
	raw, err := d.rawString()
	if err != nil {
		return "", err
	}
	return string(raw), nil
}

// rawString decodes a JSON string into bytes that are valid until the
// next call: the buffer itself when the string has no escapes.
func (d *decoder) rawString() ([]byte, error) {
	if err := d.expect('"'); err != nil {
		return nil, err
	}
	start := d.i
	for d.i < len(d.buf) {
		switch c := d.buf[d.i]; {
		case c == '"':
			s := d.buf[start:d.i]
			d.i++
			return validUTF8(s), nil
		case c == '\\':
			return d.escapedString(start)
		case c < 0x20:
			return nil, d.errorf("control character in a string")
		default:
			d.i++
		}
	}
	return nil, d.errorf("unterminated string")
}

// escapedString decodes the rest of a string that has escapes, from its
// start.
func (d *decoder) escapedString(start int) ([]byte, error) {
	out := append([]byte(nil), d.buf[start:d.i]...)
	for d.i < len(d.buf) {
		c := d.buf[d.i]
		switch {
		case c == '"':
			d.i++
			return validUTF8(out), nil
		case c < 0x20:
			return nil, d.errorf("control character in a string")
		case c != '\\':
			out = append(out, c)
			d.i++
			continue
		}
		if d.i+1 >= len(d.buf) {
			break
		}
		e := d.buf[d.i+1]
		d.i += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := d.hex4()
			if !ok {
				return nil, d.errorf("bad \\u escape")
			}
			if utf16.IsSurrogate(r) {
				r2 := utf8.RuneError
				if d.i+1 < len(d.buf) && d.buf[d.i] == '\\' && d.buf[d.i+1] == 'u' {
					save := d.i
					d.i += 2
					if lo, ok := d.hex4(); ok {
						if dec := utf16.DecodeRune(r, lo); dec != utf8.RuneError {
							r2 = dec
						} else {
							d.i = save
						}
					} else {
						d.i = save
					}
				}
				r = r2
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, d.errorf("bad escape \\%c", e)
		}
	}
	return nil, d.errorf("unterminated string")
}

// validUTF8 replaces each byte of b that is not part of valid UTF-8 with
// U+FFFD, as encoding/json does; b itself when it is valid.
func validUTF8(b []byte) []byte {
	if utf8.Valid(b) {
		return b
	}
	out := make([]byte, 0, len(b)+8)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size == 1 {
			out = utf8.AppendRune(out, utf8.RuneError)
		} else {
			out = append(out, b[:size]...)
		}
		b = b[size:]
	}
	return out
}

func (d *decoder) hex4() (rune, bool) {
	if d.i+4 > len(d.buf) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(d.buf[d.i:d.i+4]), 16, 16)
	if err != nil {
		return 0, false
	}
	d.i += 4
	return rune(v), true
}

// skip consumes any JSON value.
func (d *decoder) skip() error {
	switch c := d.peek(); {
	case c == '{':
		return d.object(func([]byte) error { return d.skip() })
	case c == '[':
		return d.array(d.skip)
	case c == '"':
		_, err := d.rawString()
		return err
	case c == 't' || c == 'f' || c == 'n':
		for _, lit := range []string{"true", "false", "null"} {
			if len(d.buf)-d.i >= len(lit) && string(d.buf[d.i:d.i+len(lit)]) == lit {
				d.i += len(lit)
				return nil
			}
		}
		return d.errorf("bad literal")
	case c == '-' || (c >= '0' && c <= '9'):
		start := d.i
		for d.i < len(d.buf) && (d.buf[d.i] == '-' || d.buf[d.i] == '+' || d.buf[d.i] == '.' || d.buf[d.i] == 'e' || d.buf[d.i] == 'E' || (d.buf[d.i] >= '0' && d.buf[d.i] <= '9')) {
			d.i++
		}
		if _, err := strconv.ParseFloat(string(d.buf[start:d.i]), 64); err != nil {
			return d.errorf("bad number")
		}
		return nil
	default:
		return d.errorf("unexpected character")
	}
}
