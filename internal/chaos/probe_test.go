package chaos_test

import (
	"testing"
	"time"
)

func TestRestartProbe(t *testing.T) {
	s := time.Now()
	as := env.ControlPlane.APIServer
	as.StopTimeout = 60 * time.Second
	if err := as.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %s", time.Since(s))
	s = time.Now()
	if err := as.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("started in %s", time.Since(s))
}
