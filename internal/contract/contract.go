// Package contract is what the webhook, the agent, the leasehold client and the
// kubectl plugin must agree on, defined once: the Pod annotations and their keys
// (annotations.go), what the agent writes on a Lease besides the record, where the
// agent's socket and client are in every container and the environment variables that
// say so, the default timings, the limits of each timing and the rules between them
// (CheckTiming, BrokenTimingRules), what a lock or semaphore name may be
// (CheckLockName, CheckSemaphore) and the holder identity (Identity, PodOf).
//
// It is the leaf of the project: it imports only the standard library and no other
// package of the project (internal/layers' TestLayers holds this), so every
// binary may link it, the client copied into every Pod included.
//
// The webhook (internal/contract/podannotations, webhook.AgentArgs) and the agent
// (sidecar/agent.Options) both apply these rules; webhook's
// TestInjectedArgsPassTheAgentsValidation feeds the command line the webhook writes
// through the agent's own flag parsing and validation, and TestWebhookAndAgentAgree
// feeds every annotation and its flag the same values and wants the same verdict.
package contract

import (
	"errors"
	"fmt"
	"time"
)

// Where the agent is, in every container of an injected Pod.
const (
	// SocketDir is where the socket volume (an emptyDir) is mounted in every container.
	SocketDir = "/run/leasehold"
	// SocketPath is the agent's socket (the local API).
	SocketPath = SocketDir + "/agent.sock"
	// ProbeSocketPath is the agent's socket for the kubelet's exec probes alone
	// (/healthz and /readyz, outside the agent's --max-connections).
	ProbeSocketPath = SocketDir + "/probe.sock"
	// CLIPath is where the agent puts the leasehold client for every container.
	CLIPath = SocketDir + "/bin/leasehold"

	// EnvSocket, EnvURL (with leasehold.io/tcp-port) and EnvCLI tell the app's
	// containers where the agent and its client are.
	EnvSocket = "LEASEHOLD_SOCKET"
	EnvURL    = "LEASEHOLD_URL"
	EnvCLI    = "LEASEHOLD_CLI"

	// EnvMemoryLimit carries the agent container's memory limit in bytes (the
	// downward API's limits.memory), from which the agent sets its Go memory limit
	// (sidecar/agent.SetMemoryLimit).
	EnvMemoryLimit = "LEASEHOLD_MEMORY_LIMIT"

	// AgentUID is the user and group the agent runs as; the socket's group. It is
	// no UID that images commonly run as (0, 1000, 1001, 10001, 65532 for distroless's
	// nonroot, 65534 for nobody) nor in the range systemd hands out on nodes
	// (61184-65519), so that an app container does not run as the agent's user by
	// chance: with a shared process namespace, a process of the same UID could reach
	// into the agent (/proc/PID/root, signals, ptrace) and write where it writes.
	AgentUID int64 = 53530
)

// Timings: client-go's leader election defaults and rules.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second

	// DefaultGrace is how long a hold may stay in jeopardy (renew-deadline passed while
	// the API server was unavailable) before it is lost. It covers a kube-apiserver
	// restart four times over: the outages measured on a one-node control plane were
	// 4-5 s for an in-place restart and 6.9 s until ready under 1,000 Pods
	// (BENCHMARKS.md, Scale). A longer grace costs nothing in safety (a resumed renewal
	// is conditional on the agent's own last write): only how long an app under
	// `leasehold run` may stay frozen. 0 turns jeopardy off (README, "Choices made").
	DefaultGrace = 30 * time.Second

	// MinTiming is the least lease-duration, renew-deadline and retry-period a Pod may
	// ask for.
	MinTiming = time.Second

	// MaxLeaseDuration bounds every timing the webhook accepts. It is the cap on
	// spec.leaseDurationSeconds of the admission policies in
	// manifests/base/admission-policy.yaml (3600): a longer lease-duration would have
	// every write of the agent refused. It is also the longest the agent waits out
	// another holder's Lease without a renew: a Lease that names a longer
	// leaseDurationSeconds (written where no policy refused it) counts as this long,
	// so that no Lease created once blocks a lock for longer (sidecar/lock).
	MaxLeaseDuration = time.Hour

	// JitterFactor is client-go's leaderelection.JitterFactor: renew-deadline must
	// exceed JitterFactor × retry-period.
	JitterFactor = 1.2
)

// TimingRule names one of the rules between the three timings.
type TimingRule int

const (
	// LeaseAboveRenew: lease-duration > renew-deadline, so that a holder gives a hold
	// up before other Pods may take the lock.
	LeaseAboveRenew TimingRule = iota + 1
	// RenewAboveRetry: renew-deadline > JitterFactor × retry-period, so that a renewal
	// can be retried before the deadline.
	RenewAboveRetry
)

// String states the rule: "lease-duration > renew-deadline".
func (r TimingRule) String() string {
	switch r {
	case LeaseAboveRenew:
		return "lease-duration > renew-deadline"
	case RenewAboveRetry:
		return fmt.Sprintf("renew-deadline > %v x retry-period", JitterFactor)
	}
	return fmt.Sprintf("timing rule %d", int(r))
}

// Why says what the rule protects, for error messages.
func (r TimingRule) Why() string {
	switch r {
	case LeaseAboveRenew:
		return "so that a hold is given up before other Pods may take the lock"
	case RenewAboveRetry:
		return "so that a renewal can be retried before the deadline"
	}
	return fmt.Sprintf("timing rule %d", int(r))
}

// BrokenTimingRules returns the rules that lease, renew and retry break (none: nil).
func BrokenTimingRules(lease, renew, retry time.Duration) []TimingRule {
	var out []TimingRule
	if lease <= renew {
		out = append(out, LeaseAboveRenew)
	}
	if float64(renew) <= JitterFactor*float64(retry) {
		out = append(out, RenewAboveRetry)
	}
	return out
}

// Timing names one of the four timings: the agent's flag (--lease-duration) and,
// under AnnotationPrefix, the Pod's annotation.
type Timing string

// The timings.
const (
	LeaseDuration Timing = "lease-duration"
	RenewDeadline Timing = "renew-deadline"
	RetryPeriod   Timing = "retry-period"
	Grace         Timing = "grace"
)

// Limit names a limit that one timing breaks on its own.
type Limit int

const (
	// BelowMin: under MinTiming (lease-duration, renew-deadline, retry-period).
	BelowMin Limit = iota + 1
	// AboveMax: over MaxLeaseDuration (every timing).
	AboveMax
	// NotWholeSeconds: a lease-duration with a fraction of a second (a Lease stores
	// leaseDurationSeconds).
	NotWholeSeconds
	// Negative: a grace under 0 (0 turns jeopardy off).
	Negative
)

// TimingError is a timing out of its limits.
type TimingError struct {
	Timing Timing
	Value  time.Duration
	Limit  Limit
}

func (e *TimingError) Error() string { return fmt.Sprintf("%s %s %s", e.Timing, e.Value, e.Rule()) }

// Rule is the limit broken, as a phrase: "must be at least 1s".
func (e *TimingError) Rule() string {
	switch e.Limit {
	case BelowMin:
		return "must be at least " + MinTiming.String()
	case AboveMax:
		return "must be at most " + MaxLeaseDuration.String()
	case NotWholeSeconds:
		return "must be whole seconds (a Lease stores leaseDurationSeconds)"
	case Negative:
		return "must not be negative"
	}
	return fmt.Sprintf("breaks limit %d", int(e.Limit))
}

// CheckTiming says whether d is within the limits of timing t on its own, as a Pod
// may ask for it (nil, or a *TimingError). The rules between the timings are
// BrokenTimingRules.
func CheckTiming(t Timing, d time.Duration) error {
	var limit Limit
	switch {
	case t == Grace && d < 0:
		limit = Negative
	case t != Grace && d < MinTiming:
		limit = BelowMin
	case d > MaxLeaseDuration:
		limit = AboveMax
	case t == LeaseDuration && d%time.Second != 0:
		limit = NotWholeSeconds
	default:
		return nil
	}
	return &TimingError{Timing: t, Value: d, Limit: limit}
}

// CheckAgentTiming is CheckTiming for the agent's flags. It differs in one place: the
// agent takes a retry-period under MinTiming (above 0), which its test harnesses use
// to retry fast. The webhook, which writes every Pod's command line, never writes one;
// the rules between the timings still hold.
func CheckAgentTiming(t Timing, d time.Duration) error {
	err := CheckTiming(t, d)
	var te *TimingError
	if t == RetryPeriod && d > 0 && errors.As(err, &te) && te.Limit == BelowMin {
		return nil
	}
	return err
}

// The loopback TCP port of the local API (leasehold.io/tcp-port, --tcp-port): the
// agent runs without privileges, so no port under 1024.
const (
	MinTCPPort = 1024
	MaxTCPPort = 65535
)

// ErrTCPPort is what CheckTCPPort returns (wrapped).
var ErrTCPPort = fmt.Errorf("port out of range (the agent runs without privileges): use a number from %d to %d", MinTCPPort, MaxTCPPort)

// CheckTCPPort says whether p can be the agent's loopback port.
func CheckTCPPort(p int64) error {
	if p < MinTCPPort || p > MaxTCPPort {
		return fmt.Errorf("tcp-port %d: %w", p, ErrTCPPort)
	}
	return nil
}
