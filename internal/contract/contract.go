// Package contract is what the webhook and the agent must agree on: where the agent's
// socket and client are in every container, the environment variables that say so,
// the default timings and the rules they obey. The webhook (webhook.AgentArgs,
// webhook.Inject) and the agent (sidecar/agent.Options) both import it, and
// webhook's TestInjectedArgsPassTheAgentsValidation feeds the command line the
// webhook writes through the agent's own flag parsing and validation.
package contract

import (
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
