// Package agent assembles the lock agent: Kubernetes clients, the lock engine, the
// local API on the Unix socket (and loopback TCP), Prometheus metrics (GET /metrics only,
// on the Pod's IP as injected: at most --metrics-max-connections at once, apart from the
// API's, each closed after MetricsIdleTimeout idle), the Go memory limit from the
// container's (memlimit.go, called by cmd/leasehold-agent),
// Kubernetes Events on the Pod, readiness (synced, and allowed by RBAC to list, watch
// and update each lock's Lease by name and to create Leases, so that a Role narrowed
// with resourceNames to the Pod's locks passes), SIGTERM handling, and, at start,
// before the socket answers (so before the startup probe passes and the Pod's other
// containers start), a copy of the leasehold client into the socket volume for every
// container of the Pod (cli.go: InstallCLI, atomic, mode 0755, only into a directory the
// agent owns; a failure is logged, not fatal, except a directory that is not the agent's
// own, ErrUnsafeCLIDir, which stops it). cmd/leasehold-agent only parses flags into
// Options, sets the memory limit and calls Run.
//
// Run (agent.go) opens every listener first (listeners.go), then starts the parts, each
// a runnable with Start(ctx) as in controller-runtime (runnable.go): the lock manager,
// the RBAC access check (access.go), the Event recorder, the became-ready log and the
// HTTP servers (servers.go: API, probes, metrics); at SIGTERM it stops them in a fixed
// order.
//
// What it guarantees: on SIGTERM (ctx cancelled) the event streams get a "shutdown"
// event, every hold is released (one conditional write per held lock, all at once,
// bounded by --shutdown-timeout), then the listeners close and Run returns. A listener
// that cannot be opened makes Run return an error naming its flag before any lock is
// taken, with the listeners already open closed and their socket files removed.
//
// What it does NOT guarantee: releases on SIGKILL or a node crash; those locks are
// free after lease-duration. Kubernetes Events are best effort (client-go's
// broadcaster may drop or aggregate them).
package agent
