package promclient

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

const oneSample = `"data":{"resultType":"vector","result":[{"metric":{"pod":"a"},"value":[1700000000,"4"]}]}`

// What each store sends beside its values is read into Annotations:
// Prometheus 3's warnings and infos apart, Prometheus 2's infos among its
// warnings, Thanos' and Mimir's partial answers as warnings,
// VictoriaMetrics' isPartial flag.
func TestDecodeAnnotations(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       Annotations
	}{
		{"prometheus 3", `{"status":"success",` + oneSample + `,"warnings":["PromQL warning: quantile value should be between 0 and 1, got 2"],"infos":["PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"up\""]}`,
			Annotations{Warnings: []string{"PromQL warning: quantile value should be between 0 and 1, got 2"}, Infos: []string{`PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: "up"`}}},
		{"prometheus 2 infos among warnings", `{"status":"success",` + oneSample + `,"warnings":["PromQL info: metric might not be a counter"]}`,
			Annotations{Infos: []string{"PromQL info: metric might not be a counter"}}},
		{"thanos partial answer", `{"status":"success",` + oneSample + `,"warnings":["receive 10.0.0.7:10901: rpc error: code = Unavailable desc = connection refused"]}`,
			Annotations{Warnings: []string{"receive 10.0.0.7:10901: rpc error: code = Unavailable desc = connection refused"}}},
		{"victoriametrics isPartial", `{"status":"success","isPartial":true,` + oneSample + `}`, Annotations{Partial: true}},
		{"isPartial false", `{"status":"success","isPartial":false,` + oneSample + `}`, Annotations{}},
		{"nothing", `{"status":"success",` + oneSample + `}`, Annotations{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vec, ann, err := decodeQuery([]byte(tc.body))
			if err != nil || len(vec) != 1 {
				t.Fatalf("decode: %v %v", vec, err)
			}
			if !slices.Equal(ann.Warnings, tc.want.Warnings) || !slices.Equal(ann.Infos, tc.want.Infos) || ann.Partial != tc.want.Partial {
				t.Errorf("annotations = %+v, want %+v", ann, tc.want)
			}
		})
	}
}

// The attack: a store (another party's server) answers with thousands of
// huge warnings; the adapter keeps a bounded few, each cut, and says how
// many it dropped, so a refused answer's message (which ends up in HPA
// events) stays small.
func TestAnnotationsAreBounded(t *testing.T) {
	var warnings []string
	for i := range 5000 {
		warnings = append(warnings, fmt.Sprintf("%q", fmt.Sprintf("w%d %s", i, strings.Repeat("x", 10000))))
	}
	body := `{"status":"success",` + oneSample + `,"warnings":[` + strings.Join(warnings, ",") + `]}`
	_, ann, err := decodeQuery([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(ann.Warnings) != MaxAnnotations || ann.Dropped != 5000-MaxAnnotations {
		t.Fatalf("kept %d, dropped %d; want %d and %d", len(ann.Warnings), ann.Dropped, MaxAnnotations, 5000-MaxAnnotations)
	}
	for _, w := range ann.Warnings {
		if len(w) > MaxAnnotationLength+3 {
			t.Fatalf("a warning of %d bytes was kept", len(w))
		}
	}
	msg := (&WarningsError{Annotations: ann}).Error()
	if len(msg) > (MaxAnnotations+1)*(MaxAnnotationLength+20)+200 || !strings.Contains(msg, fmt.Sprintf("and %d more", 5000-MaxAnnotations)) {
		t.Fatalf("message of %d bytes: %.300s", len(msg), msg)
	}
}

// By default an answer with warnings, or flagged partial, is refused with
// an error that names the warning (a 503 once apistatus maps it: Classify
// calls it Unavailable); one with only infos is served. With ServeWarnings
// every answer is served, and its annotations are returned with it.
func TestOnWarning(t *testing.T) {
	warned := `{"status":"success",` + oneSample + `,"warnings":["No StoreAPIs matched for this query"]}`
	partial := `{"status":"success","isPartial":true,` + oneSample + `}`
	infos := `{"status":"success",` + oneSample + `,"infos":["PromQL info: metric might not be a counter"]}`
	ctx := context.Background()
	for _, body := range []string{warned, partial} {
		srv, _ := fakeProm(t, 200, body)
		refuse, err := New(Config{URL: srv.URL})
		if err != nil {
			t.Fatal(err)
		}
		vec, ann, err := refuse.QueryAnnotated(ctx, "sum(x)")
		var we *WarningsError
		if !errors.As(err, &we) || vec != nil || !ann.Doubtful() || Classify(err) != Unavailable {
			t.Fatalf("default: %v %+v %v; want a WarningsError and no values", vec, ann, err)
		}
		if body == warned && !strings.Contains(err.Error(), "No StoreAPIs matched for this query") {
			t.Errorf("the refusal does not name the warning: %v", err)
		}
		if body == partial && !strings.Contains(err.Error(), "partial") {
			t.Errorf("the refusal does not say partial: %v", err)
		}
		serve, err := New(Config{URL: srv.URL, OnWarning: ServeWarnings})
		if err != nil {
			t.Fatal(err)
		}
		vec, ann, err = serve.QueryAnnotated(ctx, "sum(x)")
		if err != nil || len(vec) != 1 || vec[0].Value != 4 || !ann.Doubtful() {
			t.Fatalf("serve: %v %+v %v; want the value and its warning", vec, ann, err)
		}
	}
	srv, _ := fakeProm(t, 200, infos)
	c, err := New(Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	vec, ann, err := c.QueryAnnotated(ctx, "rate(up[1m])")
	if err != nil || len(vec) != 1 || len(ann.Infos) != 1 || ann.Doubtful() {
		t.Fatalf("infos only: %v %+v %v; want served with its info", vec, ann, err)
	}
	if _, err := New(Config{URL: srv.URL, OnWarning: "ignore"}); err == nil {
		t.Fatal(`OnWarning "ignore" accepted`)
	}
}
