package promclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// reference decodes an answer the way client_golang does (encoding/json
// into the common model types), to compare decodeQuery with.
func reference(body []byte) (model.Vector, error) {
	var resp struct {
		Status string `json:"status"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, err
	}
	if resp.Status != "success" || resp.Data.ResultType != "vector" {
		return nil, errors.New("not a vector")
	}
	var vec model.Vector
	if err := json.Unmarshal(resp.Data.Result, &vec); err != nil {
		return nil, err
	}
	return vec, nil
}

func sameVector(a, b model.Vector) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Metric.Equal(b[i].Metric) || a[i].Timestamp != b[i].Timestamp {
			return false
		}
		x, y := float64(a[i].Value), float64(b[i].Value)
		if x != y && !(math.IsNaN(x) && math.IsNaN(y)) {
			return false
		}
	}
	return true
}

func TestDecodeQuery(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string // the vector as "labels=value@ms;..."
		err  string
	}{
		{
			name: "decodes a vector",
			body: readReply(t, "vector.json"),
			want: `{pod="app-a"}=1.5@1700000000500;{pod="app-b"}=0.25@1700000000500`,
		},
		{
			name: "keeps escaped label values, every label, and special values",
			body: `{"status":"success","data":{"resultType":"vector","result":[` +
				`{"metric":{"pod":"a\"b\\c\u00e9\ud83d\ude00","__name__":"x"},"value":[1700000000,"NaN"]},` +
				`{"metric":{},"value":[1700000000.1,"+Inf"]},` +
				`{"metric":{"a":"b"},"value":[ 1700000000.123 , "-2.5e3" ]}]},"warnings":["w1"]}`,
			want: `x{pod="a\"b\\cé😀"}=NaN@1700000000000;{}=+Inf@1700000000100;{a="b"}=-2500@1700000000123`,
		},
		{
			name: "ignores keys it does not know, before and after",
			body: `{"infos":["i"],"status":"success","stats":{"a":[1,{"b":null}],"c":true},"data":{"resultType":"vector","result":[],"extra":1.5e2}}`,
			want: ``,
		},
		{
			name: "reads repeated keys as encoding/json does: the last result, merged labels",
			body: `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"old"},"value":[1,"9"]}],` +
				`"result":[{"metric":{"pod":"a"},"metric":{"ns":"x"},"value":[1,"1"]}]}}`,
			want: `{ns="x", pod="a"}=1@1000`,
		},
		{name: "rejects a scalar", body: `{"status":"success","data":{"resultType":"scalar","result":[1700000000,"1"]}}`, err: "not an instant vector"},
		{name: "rejects a matrix", body: `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}`, err: "not an instant vector"},
		{name: "rejects native histograms", body: `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}`, err: "native histogram"},
		{name: "returns Prometheus' error", body: `{"status":"error","errorType":"execution","error":"too many samples"}`, err: "too many samples"},
		{name: "rejects a truncated answer", body: `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"a"},"value":[1,"1"]`, err: "bad_response"},
		{name: "rejects a value that is not a number", body: `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}`, err: "not a number"},
		{name: "rejects trailing data", body: `{"status":"success","data":{"resultType":"vector","result":[]}} {}`, err: "after the answer"},
		{name: "rejects a raw control character", body: "{\"status\":\"succ\x01ess\"}", err: "control character"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vec, _, err := decodeQuery([]byte(tc.body))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var parts []string
			for _, s := range vec {
				parts = append(parts, fmt.Sprintf("%s=%s@%d", s.Metric, s.Value, int64(s.Timestamp)))
			}
			if got := strings.Join(parts, ";"); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			if ref, err := reference([]byte(tc.body)); err != nil || !sameVector(vec, ref) {
				t.Errorf("client_golang's decoding disagrees: %v, %v", ref, err)
			}
		})
	}
}

func TestDecodeQueryErrorTypes(t *testing.T) {
	_, _, err := decodeQuery([]byte(`{"status":"error","errorType":"bad_data","error":"parse error"}`))
	var apiErr *v1.Error
	if !errors.As(err, &apiErr) || apiErr.Type != v1.ErrBadData || Classify(err) != BadQuery {
		t.Errorf("error = %#v, want bad_data", err)
	}
}

// FuzzDecodeQuery checks that decodeQuery never panics, and that whatever
// it accepts client_golang's decoding reads the same.
func FuzzDecodeQuery(f *testing.F) {
	f.Add([]byte(`{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"a\"b"},"value":[1700000000.5,"1.5"]}]}}`))
	f.Add([]byte(`{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]},"warnings":[]}`))
	f.Add([]byte(`{"status":"error","errorType":"bad_data","error":"x"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		vec, _, err := decodeQuery(body)
		if err != nil {
			return
		}
		ref, rerr := reference(body)
		if rerr != nil {
			// encoding/json is stricter about some inputs (invalid UTF-8
			// in keys, duplicate handling): only compare what it reads.
			return
		}
		if !sameVector(vec, ref) {
			t.Errorf("decodeQuery and client_golang disagree on %q:\n%v\n%v", body, vec, ref)
		}
	})
}

func BenchmarkDecodeQuery(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"status":"success","data":{"resultType":"vector","result":[`)
	for i := range 10000 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"metric":{"pod":"app-%05d"},"value":[1700000000.123,"%d.25"]}`, i, i)
	}
	sb.WriteString(`]}}`)
	body := []byte(sb.String())
	b.Run("decodeQuery", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := decodeQuery(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("client_golang", func(b *testing.B) {
		for b.Loop() {
			if _, err := reference(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
