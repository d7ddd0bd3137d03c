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
