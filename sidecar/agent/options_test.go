package agent

import (
	"strings"
	"testing"
)

// Every bad flag is reported at once, each naming the flag and what it must be.
func TestValidateNamesEachBadFlag(t *testing.T) {
	o := NewOptions()
	o.Namespace, o.PodName, o.PodUID, o.Locks = "default", "p", "u", []string{"a"}
	if err := o.Validate(); err != nil {
		t.Fatalf("the defaults with a Pod and a lock: %v", err)
	}
	o.Namespace, o.TCPPort, o.MaxConnections, o.RenewDeadline = "Not_A_Namespace", 70000, 0, o.LeaseDuration
	err := o.Validate()
	if err == nil {
		t.Fatal("bad flags accepted")
	}
	for _, want := range []string{`--namespace="Not_A_Namespace"`, "--tcp-port=70000", "--max-connections=0 must be at least 1",
		"--lease-duration=15s must be greater than --renew-deadline=15s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

// --metrics-bind-address: ":port" (every address), "host:port", or "0"/"" (off); a bad
// one is refused naming what to write instead.
func TestValidateMetricsBindAddress(t *testing.T) {
	for addr, want := range map[string]string{
		":9090": "", "127.0.0.1:9090": "", "[::1]:9090": "", "0": "", "": "", "localhost:9090": "",
		"9090":            `is not host:port: use ":9090"`,
		":0":              "is not a number from 1 to 65535",
		":http":           "is not a number from 1 to 65535",
		"pod.local:9090":  `is not an IP address: use ":9090"`,
		"127.0.0.1:8970":  "uses the port of --tcp-port=8970",
		"0.0.0.0:70000":   "is not a number from 1 to 65535",
		"10.244.0.7:9091": "",
	} {
		o := NewOptions()
		o.Namespace, o.PodName, o.PodUID, o.Locks, o.TCPPort = "default", "p", "u", []string{"a"}, 8970
		o.MetricsBindAddress = addr
		err := o.Validate()
		switch {
		case want == "" && err != nil:
			t.Errorf("--metrics-bind-address=%q refused: %v", addr, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("--metrics-bind-address=%q: got %v, want an error with %q", addr, err, want)
		}
	}
}
