package webhook

import (
	"strings"
	"testing"
)

// --agent-metrics-bind-address: ":port" (the Pod's IP), "127.0.0.1:port" (loopback) or
// "0" (off); a bad one stops the webhook at start, naming what to write instead.
func TestOptionsAgentMetricsBindAddress(t *testing.T) {
	for addr, want := range map[string]string{
		":9090": "", "127.0.0.1:9090": "", "0": "", "[::]:9100": "",
		"9090":           `is not host:port: use ":9090"`,
		":80":            "from 1024 to 65535",
		":x":             "from 1024 to 65535",
		"localhost:9090": `is not an IP address: use ":9090"`,
	} {
		o := DefaultOptions()
		o.AgentMetricsBindAddress = addr
		err := o.Validate()
		switch {
		case want == "" && err != nil:
			t.Errorf("%q refused: %v", addr, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%q: got %v, want an error with %q", addr, err, want)
		}
	}
	for addr, port := range map[string]int32{":9090": 9090, "0.0.0.0:9091": 9091, "127.0.0.1:9090": 0, "[::1]:9090": 0, "0": 0, "localhost:9090": 0} {
		if got := metricsPort(addr); got != port {
			t.Errorf("metricsPort(%q) = %d, want %d", addr, got, port)
		}
	}
}
