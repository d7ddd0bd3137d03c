package agent

import (
	"math"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/leasehold/leasehold/internal/contract"
)

func TestSetMemoryLimit(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1)) // restore the test process's own
	tests := map[string]struct {
		env       map[string]string
		want      int64 // the runtime's limit afterwards; -1: unchanged
		wantFrom  string
		wantError string
	}{
		"from the container's limit": {env: map[string]string{contract.EnvMemoryLimit: "67108864"}, want: 53687091, wantFrom: contract.EnvMemoryLimit},
		"GOMEMLIMIT wins":            {env: map[string]string{"GOMEMLIMIT": "40MiB", contract.EnvMemoryLimit: "67108864"}, want: -1, wantFrom: "GOMEMLIMIT"},
		"no limit known":             {env: map[string]string{}, want: -1},
		"not bytes":                  {env: map[string]string{contract.EnvMemoryLimit: "64Mi"}, want: -1, wantError: "is not the container's memory limit in bytes"},
		"zero":                       {env: map[string]string{contract.EnvMemoryLimit: "0"}, want: -1, wantError: "resourceFieldRef limits.memory"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			debug.SetMemoryLimit(math.MaxInt64)
			got, from, err := SetMemoryLimit(func(k string) string { return tc.env[k] })
			if tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("want an error with %q, got %v", tc.wantError, err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			now := debug.SetMemoryLimit(-1)
			switch {
			case tc.want == -1 && now != math.MaxInt64:
				t.Errorf("the runtime's limit changed to %d", now)
			case tc.want != -1 && (now != tc.want || got != tc.want):
				t.Errorf("limit %d (returned %d), want %d: %v of the container's limit", now, got, tc.want, MemoryLimitFraction)
			}
			if from != tc.wantFrom {
				t.Errorf("from %q, want %q", from, tc.wantFrom)
			}
		})
	}
}
