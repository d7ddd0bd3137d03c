// Package kubeapi is the agent's small door to the Kubernetes API server: a Lease
// client (list, watch, create, update in one namespace) over client-go's REST client
// with a scheme that knows only coordination.k8s.io/v1, Pod Events and
// SelfSubjectAccessReviews as plain JSON, and the client configuration (in-cluster, or
// the current context of a kubeconfig file).
//
// Why not client-go's clientset: importing it registers every API group of
// Kubernetes at start-up, which alone costs the agent more memory than its whole
// budget (PRODUCT: an agent idles in ≤ 15 MiB).
//
// What it guarantees: every write is sent as given (the caller's resourceVersion is
// the precondition); nothing is retried here. What it does NOT guarantee: Events are
// best effort: Normal ones are rate limited (a burst of EventBurst, then one every
// EventRefill), Warnings are not; any is dropped when the queue is full or the API
// server refuses it.
//
// Kubeconfig support covers what agents and tests use: the current context's server,
// certificate authority (data or file), client certificate and key (data or file),
// bearer token (or token file) and insecure-skip-tls-verify. Exec and auth-provider
// plugins are not supported.
package kubeapi
