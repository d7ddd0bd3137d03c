package podannotations

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/leasehold/leasehold/internal/contract"
)

func TestParseAnnotations(t *testing.T) {
	def := func(c Config) *Config {
		if c.LeaseDuration == 0 {
			c.LeaseDuration = contract.DefaultLeaseDuration
		}
		if c.RenewDeadline == 0 {
			c.RenewDeadline = contract.DefaultRenewDeadline
		}
		if c.RetryPeriod == 0 {
			c.RetryPeriod = contract.DefaultRetryPeriod
		}
		if !c.GraceSet {
			c.Grace = contract.DefaultGrace
		}
		return &c
	}
	tests := map[string]struct {
		in   map[string]string
		want *Config
	}{
		"one lock": {
			in:   map[string]string{contract.AnnotationLocks: "db"},
			want: def(Config{Locks: []string{"db"}}),
		},
		"spaces and dots": {
			in:   map[string]string{contract.AnnotationLocks: " a , b.c ", contract.AnnotationLeader: "lead"},
			want: def(Config{Locks: []string{"a", "b.c"}, Leader: []string{"lead"}}),
		},
		"timings and port": {
			in: map[string]string{contract.AnnotationLeader: "l", contract.AnnotationLeaseDuration: "1m", contract.AnnotationRenewDeadline: "40s",
				contract.AnnotationRetryPeriod: "5s", contract.AnnotationTCPPort: "8970", contract.AnnotationInject: "true", "other.io/x": "y"},
			want: &Config{Leader: []string{"l"}, LeaseDuration: time.Minute, RenewDeadline: 40 * time.Second,
				RetryPeriod: 5 * time.Second, Grace: contract.DefaultGrace, TCPPort: 8970},
		},
		"grace": {
			in:   map[string]string{contract.AnnotationLocks: "db", contract.AnnotationGrace: "2m"},
			want: def(Config{Locks: []string{"db"}, Grace: 2 * time.Minute, GraceSet: true}),
		},
		"grace 0 turns jeopardy off": {
			in:   map[string]string{contract.AnnotationLocks: "db", contract.AnnotationGrace: "0s"},
			want: def(Config{Locks: []string{"db"}, GraceSet: true}),
		},
		"semaphores": {
			in:   map[string]string{contract.AnnotationSemaphores: "report=3, batch.jobs=1", contract.AnnotationLocks: "db"},
			want: def(Config{Locks: []string{"db"}, Semaphores: []Semaphore{{Name: "report", Size: 3}, {Name: "batch.jobs", Size: 1}}}),
		},
		"status written by the webhook is accepted": {
			in:   map[string]string{contract.AnnotationLocks: "db", contract.AnnotationStatus: contract.StatusInjected},
			want: def(Config{Locks: []string{"db"}}),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, errs := Parse(tc.in)
			if len(errs) > 0 {
				t.Fatalf("unexpected errors: %v", errs.ToAggregate())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestParseAnnotationsErrors checks that each denial names the annotation, the value
// and a fix.
func TestParseAnnotationsErrors(t *testing.T) {
	tests := map[string]struct {
		in   map[string]string
		want []string // each must appear in the message
	}{
		"uppercase name": {
			in:   map[string]string{contract.AnnotationLocks: "DB_Lock"},
			want: []string{`metadata.annotations[leasehold.io/locks]: Invalid value: "DB_Lock"`, `lock name "DB_Lock" is not a valid Lease name`, `fix:`, `"db-lock"`},
		},
		"empty between commas": {
			in:   map[string]string{contract.AnnotationLocks: "a,,b"},
			want: []string{`[leasehold.io/locks]: Invalid value: "a,,b"`, "fix: remove the extra comma"},
		},
		"grace not a duration": {
			in:   map[string]string{contract.AnnotationLocks: "db", contract.AnnotationGrace: "forever"},
			want: []string{`[leasehold.io/grace]: Invalid value: "forever"`, "not a duration", "fix:"},
		},
		"negative grace": {
			in:   map[string]string{contract.AnnotationLocks: "db", contract.AnnotationGrace: "-5s"},
			want: []string{`[leasehold.io/grace]: Invalid value: "-5s"`, "must not be negative", "fix:"},
		},
		"grace over the maximum": {
			in:   map[string]string{contract.AnnotationLocks: "db", contract.AnnotationGrace: "2h"},
			want: []string{`[leasehold.io/grace]: Invalid value: "2h"`, "at most 1h0m0s", "fix:"},
		},
		"empty value": {
			in:   map[string]string{contract.AnnotationLeader: " "},
			want: []string{`[leasehold.io/leader]: Invalid value: " "`, "no lock name given; fix: list at least one lock name"},
		},
		"duplicate in one annotation": {
			in:   map[string]string{contract.AnnotationLocks: "a,b,a"},
			want: []string{`[leasehold.io/locks]: Invalid value: "a,b,a"`, `lock name "a" is listed twice; fix: list it once`},
		},
		"duplicate across annotations": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationLeader: "a"},
			want: []string{`[leasehold.io/leader]: Invalid value: "a"`, `lock name "a" is also listed in leasehold.io/locks`, "fix: keep it in one of them"},
		},
		"bad duration": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationLeaseDuration: "15"},
			want: []string{`[leasehold.io/lease-duration]: Invalid value: "15"`, `not a duration; fix: use Go duration syntax with a unit, e.g. "15s"`},
		},
		"fractional lease duration": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationLeaseDuration: "15500ms"},
			want: []string{`[leasehold.io/lease-duration]: Invalid value: "15500ms"`, "must be whole seconds", `fix: use "16s"`},
		},
		"too short": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationRetryPeriod: "100ms"},
			want: []string{`[leasehold.io/retry-period]: Invalid value: "100ms"`, "must be at least 1s"},
		},
		"renew deadline not below lease duration": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationRenewDeadline: "20s"},
			want: []string{`[leasehold.io/renew-deadline]: Invalid value: "20s"`, "leasehold.io/lease-duration (15s, the default) must be greater than leasehold.io/renew-deadline (20s)", "fix: raise leasehold.io/lease-duration or lower leasehold.io/renew-deadline"},
		},
		"lease duration set too low": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationLeaseDuration: "5s"},
			want: []string{`[leasehold.io/lease-duration]: Invalid value: "5s"`, "leasehold.io/lease-duration (5s) must be greater than leasehold.io/renew-deadline (10s, the default)"},
		},
		"retry period too long for the deadline": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationRetryPeriod: "9s"},
			want: []string{`[leasehold.io/retry-period]: Invalid value: "9s"`, "must be greater than 1.2 x leasehold.io/retry-period (9s)"},
		},
		"port not a number": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationTCPPort: "http"},
			want: []string{`[leasehold.io/tcp-port]: Invalid value: "http"`, "not a port number; fix: use a number from 1024 to 65535"},
		},
		"privileged port": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationTCPPort: "80"},
			want: []string{`[leasehold.io/tcp-port]: Invalid value: "80"`, "port out of range"},
		},
		"metrics neither true nor false": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationMetrics: "off"},
			want: []string{`[leasehold.io/metrics]: Invalid value: "off"`, `fix: use "false" to turn the agent's metrics endpoint off`},
		},
		"metrics without a lock": {
			in:   map[string]string{contract.AnnotationMetrics: "false"},
			want: []string{`[leasehold.io/metrics]: Invalid value: "false"`, "the Pod names no lock"},
		},
		"unknown key (typo)": {
			in:   map[string]string{contract.AnnotationLocks: "a", "leasehold.io/lease-duraton": "20s"},
			want: []string{`[leasehold.io/lease-duraton]: Invalid value: "20s"`, `unknown Leasehold annotation key; fix: did you mean "leasehold.io/lease-duration"?`},
		},
		"typo of the lock key alone": {
			in:   map[string]string{"leasehold.io/lock": "a"},
			want: []string{`[leasehold.io/lock]`, `did you mean "leasehold.io/locks"?`},
		},
		"timing without locks": {
			in:   map[string]string{contract.AnnotationLeaseDuration: "20s"},
			want: []string{`[leasehold.io/lease-duration]`, "the Pod names no lock; fix: add leasehold.io/locks, leasehold.io/leader or leasehold.io/semaphores"},
		},
		"semaphore without N": {
			in:   map[string]string{contract.AnnotationSemaphores: "report"},
			want: []string{`[leasehold.io/semaphores]: Invalid value: "report"`, `"report" has no =N; fix: write name=N`, `"report=3"`},
		},
		"semaphore N out of range": {
			in:   map[string]string{contract.AnnotationSemaphores: "report=0"},
			want: []string{`[leasehold.io/semaphores]: Invalid value: "report=0"`, "N must be a whole number from 1 to 64", `fix: e.g. "report=3"`},
		},
		"semaphore N not a number": {
			in:   map[string]string{contract.AnnotationSemaphores: "report=three"},
			want: []string{"N must be a whole number from 1 to 64"},
		},
		"semaphore bad name": {
			in:   map[string]string{contract.AnnotationSemaphores: "Report=2"},
			want: []string{`semaphore name "Report" is not a valid Lease name (its slots are the Leases Report.1 .. Report.2)`, `"report"`},
		},
		"semaphore also a lock": {
			in:   map[string]string{contract.AnnotationLocks: "report", contract.AnnotationSemaphores: "report=2"},
			want: []string{`semaphore "report" is also listed in leasehold.io/locks`, "fix: keep it in one of them"},
		},
		"lock named like a slot": {
			in:   map[string]string{contract.AnnotationLocks: "report.2", contract.AnnotationSemaphores: "report=2"},
			want: []string{`semaphore report's slot 2 is the Lease "report.2", which leasehold.io/locks also names as a lock`, "fix: rename"},
		},
		"empty semaphores": {
			in:   map[string]string{contract.AnnotationSemaphores: ""},
			want: []string{`[leasehold.io/semaphores]`, "no lock name given"},
		},
		"inject typo": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationInject: "flase"},
			want: []string{`[leasehold.io/inject]: Invalid value: "flase"`, `fix: use "false" to opt out`},
		},
		"status written by a user": {
			in:   map[string]string{contract.AnnotationLocks: "a", contract.AnnotationStatus: "done"},
			want: []string{`[leasehold.io/status]: Invalid value: "done"`, "written by the webhook; fix: remove it"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg, errs := Parse(tc.in)
			if len(errs) == 0 {
				t.Fatalf("no error; config %+v", cfg)
			}
			if cfg != nil {
				t.Errorf("config %+v returned with errors", cfg)
			}
			msg := errs.ToAggregate().Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q\ndoes not contain %q", msg, w)
				}
			}
		})
	}
}

func TestParseAnnotationsReportsAll(t *testing.T) {
	_, errs := Parse(map[string]string{contract.AnnotationLocks: "A", contract.AnnotationTCPPort: "1", "leasehold.io/x": ""})
	if len(errs) != 3 {
		t.Errorf("want 3 errors, got %d: %v", len(errs), errs.ToAggregate())
	}
}

func TestWanted(t *testing.T) {
	tests := map[string]struct {
		in   map[string]string
		want bool
	}{
		"none":          {nil, false},
		"locks":         {map[string]string{contract.AnnotationLocks: "a"}, true},
		"leader":        {map[string]string{contract.AnnotationLeader: "a"}, true},
		"opted out":     {map[string]string{contract.AnnotationLocks: "a", contract.AnnotationInject: "false"}, false},
		"explicit true": {map[string]string{contract.AnnotationLocks: "a", contract.AnnotationInject: "true"}, true},
		"timing only":   {map[string]string{contract.AnnotationLeaseDuration: "20s"}, false},
	}
	for name, tc := range tests {
		if got := Wanted(tc.in); got != tc.want {
			t.Errorf("%s: Wanted = %v, want %v", name, got, tc.want)
		}
	}
}
