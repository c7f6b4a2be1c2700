package values

import (
	"fmt"
	"math"
	"testing"
)

func TestQuantity(t *testing.T) {
	tests := []struct {
		in   float64
		want string
		ok   bool
	}{
		{in: 0, want: "0", ok: true},
		{in: 1.5, want: "1500m", ok: true},
		{in: 0.0005, want: "500u", ok: true},
		{in: 1e-9, want: "1n", ok: true},
		{in: 0.123456789, want: "123456789n", ok: true},
		{in: 8.982068966, want: "8982m", ok: true},
		{in: 1e15, want: "1P", ok: true},
		{in: -2.25, want: "-2250m", ok: true},
		{in: 123456789.5, want: "123456789500m", ok: true},
		{in: 1e12, want: "1T", ok: true},
		{in: math.NaN(), ok: false},
		{in: math.Inf(1), ok: false},
		{in: math.Inf(-1), ok: false},
		{in: 1e300, ok: false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.in), func(t *testing.T) {
			q, ok := Quantity(tc.in)
			if ok != tc.ok {
				t.Fatalf("Quantity(%v) ok = %v", tc.in, ok)
			}
			if ok && q.String() != tc.want {
				t.Errorf("Quantity(%v) = %s, want %s", tc.in, q.String(), tc.want)
			}
		})
	}
}
