package contract

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// CheckLockName is apimachinery's IsDNS1123Subdomain, written out to keep this package
// a leaf: every string of up to four characters over an alphabet with the edge cases
// (letters, digits, '-', '.', upper case, '_'), the length limits, and seeded random
// strings get the same verdict from both.
func TestLockNameAsApimachinery(t *testing.T) {
	const alphabet = "a0-.Z_"
	var names []string
	var grow func(prefix string, n int)
	grow = func(prefix string, n int) {
		names = append(names, prefix)
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			grow(prefix+string(c), n-1)
		}
	}
	grow("", 4)
	long := strings.Repeat("a", MaxLockNameLength)
	names = append(names, long, long+"a", long[:251]+".b", long[:252]+".", strings.Repeat("ab.", 84), "ä", "a\x00b", "a b")
	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 0))
	for range 20000 {
		b := make([]byte, 1+r.IntN(12))
		for i := range b {
			b[i] = "abz09-._A"[r.IntN(9)]
		}
		names = append(names, string(b))
	}
	for _, n := range names {
		want := len(validation.IsDNS1123Subdomain(n)) == 0
		if got := CheckLockName(n) == nil; got != want {
			t.Errorf("%q (seed %d): CheckLockName says valid=%v, apimachinery says %v", n, seed, got, want)
		}
	}
}

func TestCheckTiming(t *testing.T) {
	tests := map[string]struct {
		timing Timing
		d      time.Duration
		want   Limit // 0: within the limits
	}{
		"lease 1s":            {LeaseDuration, time.Second, 0},
		"lease 1h":            {LeaseDuration, time.Hour, 0},
		"lease 999ms":         {LeaseDuration, 999 * time.Millisecond, BelowMin},
		"lease 1h1s":          {LeaseDuration, time.Hour + time.Second, AboveMax},
		"lease 1.5s":          {LeaseDuration, 1500 * time.Millisecond, NotWholeSeconds},
		"renew 1.3s":          {RenewDeadline, 1300 * time.Millisecond, 0},
		"renew 0":             {RenewDeadline, 0, BelowMin},
		"retry 250ms":         {RetryPeriod, 250 * time.Millisecond, BelowMin},
		"retry 61m":           {RetryPeriod, 61 * time.Minute, AboveMax},
		"grace 0":             {Grace, 0, 0},
		"grace 1ms":           {Grace, time.Millisecond, 0},
		"grace -1ns":          {Grace, -1, Negative},
		"grace 1h0m0.000001s": {Grace, time.Hour + time.Microsecond, AboveMax},
		"renew just under 1h": {RenewDeadline, time.Hour - time.Millisecond, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckTiming(tc.timing, tc.d)
			var te *TimingError
			switch {
			case tc.want == 0 && err != nil:
				t.Fatalf("want no error, got %v", err)
			case tc.want != 0 && (!errors.As(err, &te) || te.Limit != tc.want):
				t.Fatalf("want limit %d, got %v", tc.want, err)
			}
		})
	}
}

// The agent differs from a Pod's annotations in one place only: a retry-period above 0
// and under MinTiming.
func TestCheckAgentTiming(t *testing.T) {
	for _, timing := range []Timing{LeaseDuration, RenewDeadline, RetryPeriod, Grace} {
		for _, d := range []time.Duration{-time.Second, 0, time.Millisecond, 250 * time.Millisecond, time.Second, 1500 * time.Millisecond, time.Hour, 2 * time.Hour} {
			pod, agent := CheckTiming(timing, d), CheckAgentTiming(timing, d)
			differs := (pod == nil) != (agent == nil)
			if want := timing == RetryPeriod && d > 0 && d < MinTiming; differs != want {
				t.Errorf("%s %s: for a Pod %v, for the agent %v", timing, d, pod, agent)
			}
		}
	}
}

func TestBrokenTimingRules(t *testing.T) {
	tests := map[string]struct {
		lease, renew, retry time.Duration
		want                []TimingRule
	}{
		"defaults":           {DefaultLeaseDuration, DefaultRenewDeadline, DefaultRetryPeriod, nil},
		"lease = renew":      {10 * time.Second, 10 * time.Second, 2 * time.Second, []TimingRule{LeaseAboveRenew}},
		"renew = 1.2 retry":  {15 * time.Second, 12 * time.Second, 10 * time.Second, []TimingRule{RenewAboveRetry}},
		"renew > 1.2 retry":  {15 * time.Second, 12*time.Second + 1, 10 * time.Second, nil},
		"renew > retry only": {15 * time.Second, 11 * time.Second, 10 * time.Second, []TimingRule{RenewAboveRetry}},
		"both":               {2 * time.Second, 2 * time.Second, 2 * time.Second, []TimingRule{LeaseAboveRenew, RenewAboveRetry}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := BrokenTimingRules(tc.lease, tc.renew, tc.retry)
			if len(got) != len(tc.want) {
				t.Fatalf("want %v, got %v", tc.want, got)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("want %v, got %v", tc.want, got)
				}
			}
		})
	}
}

func TestCheckSemaphore(t *testing.T) {
	long := strings.Repeat("a", MaxLockNameLength-2)
	for _, tc := range []struct {
		name string
		size int
		want error
	}{
		{"report", 1, nil}, {"report", MaxSemaphoreSize, nil}, {"report", 0, ErrSemaphoreSize},
		{"report", MaxSemaphoreSize + 1, ErrSemaphoreSize}, {"Report", 2, ErrLockName},
		{long, 9, nil}, {long, 10, ErrLockName}, // the slot Lease aaa.10 is 254 characters
	} {
		if err := CheckSemaphore(tc.name, tc.size); !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("%.20s=%d: want %v, got %v", tc.name, tc.size, tc.want, err)
		}
	}
}

func TestPodOf(t *testing.T) {
	const uid = "0f8e2a4c-1111-4a4a-9c9c-123456789abc"
	for identity, want := range map[string]string{
		Identity("web-0", uid):             "web-0",
		Identity("a_b", uid):               "", // not a Pod name
		"web-0_" + strings.ToUpper(uid):    "",
		"web-0_" + uid[:35]:                "",
		"web-0":                            "",
		"_" + uid:                          "",
		"web-0_":                           "",
		"host.example.com":                 "",
		Identity("api.v1", uid):            "api.v1",
		Identity("web-0", uid) + "_" + uid: "",
	} {
		pod, ok := PodOf(identity)
		if pod != want || ok != (want != "") {
			t.Errorf("PodOf(%q) = %q, %v; want %q", identity, pod, ok, want)
		}
	}
}
