package main

import (
	"strings"
	"testing"
)

// The registry has no authentication: it refuses to listen anywhere but on loopback.
func TestRegistryListensOnLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "10.244.0.1:0"} {
		err := run(addr, t.TempDir(), false)
		if err == nil || !strings.Contains(err.Error(), "not a loopback address") {
			t.Errorf("-addr %s: %v, want a refusal", addr, err)
		}
	}
}
