package contract

// The annotations a user writes on a Pod (or a Pod template): the user's whole
// interface. The webhook reads them (internal/contract/podannotations.Parse); the
// kubectl plugin renders and reads them (kubectl leasehold rbac).
const (
	// AnnotationPrefix is the prefix of every Leasehold annotation. Any key with this
	// prefix that is not one of KnownAnnotations is refused on a Pod, so a typo never
	// passes silently.
	AnnotationPrefix = "leasehold.io/"

	// AnnotationLocks lists, comma-separated, the lock names the app takes on demand
	// (mutexes). Each name is the name of a coordination.k8s.io/v1 Lease in the Pod's
	// namespace, so it must be a DNS-1123 subdomain (CheckLockName).
	AnnotationLocks = AnnotationPrefix + "locks"

	// AnnotationLeader lists, comma-separated, the lock names the agent holds
	// continuously while the Pod lives (leader election).
	AnnotationLeader = AnnotationPrefix + "leader"

	// AnnotationSemaphores lists, comma-separated, counting locks as name=N: up to N
	// holders at once (N from 1 to MaxSemaphoreSize), each on a slot Lease name.1 ..
	// name.N (SlotName).
	AnnotationSemaphores = AnnotationPrefix + "semaphores"

	// AnnotationLeaseDuration is how long a Lease is valid after its last renewal, in Go
	// duration syntax and whole seconds (the Lease stores seconds). Default
	// DefaultLeaseDuration; limits: CheckTiming(LeaseDuration, ...).
	AnnotationLeaseDuration = AnnotationPrefix + string(LeaseDuration)

	// AnnotationRenewDeadline is how long the agent keeps reporting a hold without a
	// successful renewal. It must be shorter than the lease duration. Default
	// DefaultRenewDeadline. The agent also writes it on the Leases it holds, so that
	// `kubectl leasehold` can tell a hold in jeopardy from one held or expired.
	AnnotationRenewDeadline = AnnotationPrefix + string(RenewDeadline)

	// AnnotationRetryPeriod is how often the agent retries acquiring and renewing.
	// The renew deadline must exceed JitterFactor times it (client-go's jitter).
	// Default DefaultRetryPeriod.
	AnnotationRetryPeriod = AnnotationPrefix + string(RetryPeriod)

	// AnnotationGrace is how long a hold may stay in jeopardy (renew-deadline passed
	// while the API server was unavailable; the hold is not held but may resume with
	// the same token) before it is lost. Go duration syntax; "0s" turns jeopardy off.
	// Default DefaultGrace. The agent also writes it on the Leases it holds, as
	// AnnotationRenewDeadline.
	AnnotationGrace = AnnotationPrefix + string(Grace)

	// AnnotationTCPPort turns on the agent's loopback-only HTTP API on 127.0.0.1:<port>
	// (MinTCPPort-MaxTCPPort). Off when absent: the Unix socket is the default transport.
	AnnotationTCPPort = AnnotationPrefix + "tcp-port"

	// AnnotationMetrics set to "false" turns the agent's metrics listener off for this
	// Pod (no port, no scrape annotations). "true" (the default) serves them on the
	// Pod's IP, on the port the webhook's --agent-metrics-bind-address names.
	AnnotationMetrics = AnnotationPrefix + "metrics"

	// AnnotationInject set to "false" opts a Pod out of injection even when it names
	// locks. "true" is accepted and means the same as absent.
	AnnotationInject = AnnotationPrefix + "inject"

	// AnnotationStatus is written by the webhook (StatusInjected), never by users.
	AnnotationStatus = AnnotationPrefix + "status"

	// StatusInjected is the value of AnnotationStatus on an injected Pod.
	StatusInjected = "injected"
)

// KnownAnnotations are all the keys under AnnotationPrefix that a Pod may carry.
func KnownAnnotations() []string {
	return []string{
		AnnotationLocks, AnnotationLeader, AnnotationSemaphores, AnnotationLeaseDuration, AnnotationRenewDeadline,
		AnnotationRetryPeriod, AnnotationGrace, AnnotationTCPPort, AnnotationMetrics, AnnotationInject, AnnotationStatus,
	}
}

// What the agent writes on the Leases it holds, besides the record (holderIdentity,
// leaseDurationSeconds, acquireTime, renewTime, leaseTransitions) and
// AnnotationRenewDeadline and AnnotationGrace; what `kubectl leasehold` reads.
const (
	// LabelManagedBy is set on every Lease the agent writes, to ManagedBy.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedBy is the value of LabelManagedBy on Leases the agent writes.
	ManagedBy = "leasehold"
	// AnnotationMode records on the Lease whether it is a mutex or a leader lock, or a
	// semaphore's slot (the local API's wire.Mode values).
	AnnotationMode = AnnotationPrefix + "mode"
	// AnnotationSemaphore names, on a slot's Lease, the semaphore it belongs to.
	AnnotationSemaphore = AnnotationPrefix + "semaphore"
	// AnnotationQueue lists, comma-separated, the holder identities of the agents that
	// wait for a mutex, in the order their entry landed (sidecar/lock, queue.go).
	AnnotationQueue = AnnotationPrefix + "queue"
)
