// Package webhook is Leasehold's mutating admission webhook: it injects the lock agent
// into Pods that name locks in their annotations.
//
// It owns three things, kept apart:
//   - annotations.go: the leasehold.io/* keys and ParseAnnotations, which turns them into
//     a Config or field errors that name the annotation, the bad value and the fix. The
//     keys, defaults and rules are the contract's (internal/contract) and the parser is
//     internal/contract/podannotations, shared with kubectl leasehold; this package
//     links no part of the lock engine. Unknown leasehold.io/* keys are errors, so a
//     typo never leaves a Pod without its agent.
//   - inject.go: Inject, a pure function (no I/O) from a Pod and a Config to the injected
//     Pod: the agent as a native sidecar (first init container, restartPolicy Always, an
//     exec startup probe) or, by option, a plain container; the leasehold-socket emptyDir
//     mounted in every container; LEASEHOLD_SOCKET (and LEASEHOLD_URL) in every app and
//     init container; the socket group in supplementalGroups; leasehold.io/status.
//   - handler.go: PodInjector, the admission.Handler: HTTP in, JSON patch out.
//   - limits.go: Guard, in front of the handler: reviews over --max-review-bytes are
//     refused unread, and those in flight are bounded by their total size, counted as
//     their bytes arrive, never by the length they announce (429 beyond).
//   - server.go: Server, controller-runtime's webhook server with a listener and an
//     http.Server that defend themselves: a read timeout on the TLS handshake and on
//     each whole request, a per-peer connection cap (PeerLimitListener) and, with
//     --client-ca-file, client certificates required.
//   - tls.go, version.go: the servers' TLS settings (1.2+, ECDHE+AEAD, no HTTP/2) and
//     the API server versions the webhook runs with (1.28+, 1.29+ for native sidecars).
//
// Guarantees:
//   - Inject is idempotent: injecting its output again changes nothing, and a reinvoked
//     webhook only completes what another webhook added (a new container gets the mount
//     and the environment). The agent container and its token volume are always the
//     computed ones: a container named leasehold-agent or a projected volume named
//     leasehold-agent-token that the user wrote is replaced, never kept.
//   - A Pod whose annotations are wrong, or that already uses the agent's names in an
//     incompatible way, is denied, never admitted half-injected.
//   - The handler makes no API call and has no side effects.
//   - The agent gets its own projected ServiceAccount token (leasehold-agent-token),
//     so it reaches the API even when the Pod turns automountServiceAccountToken off.
//   - The agent's metrics are on the Pod's IP (containerPort "metrics", prometheus.io/*
//     annotations unless the Pod sets its own: scrape.go); in a hostNetwork Pod they are
//     off (the node's network is shared) and leasehold.io/tcp-port is refused.
//
// Plain-container mode (Options.PlainContainer, for clusters older than 1.29) is weaker:
// init containers run before the agent exists, so they cannot take locks, and app
// containers may start before the agent serves (the kubelet does not wait for a plain
// container's startup probe), so apps must retry until the socket answers.
//
// Not guaranteed by this package: that the webhook is called. That is the job of the
// MutatingWebhookConfiguration in manifests/ (matchConditions, namespaceSelector and
// failurePolicy: Fail, so that a lock-annotated Pod is refused when the webhook is down).
package webhook
