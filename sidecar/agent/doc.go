// Package agent assembles the lock agent: Kubernetes clients, the lock engine, the
// local API on the Unix socket (and loopback TCP), Prometheus metrics (GET /metrics only,
// on the Pod's IP as injected),
// Kubernetes Events on the Pod, readiness (synced, and allowed by RBAC to list, watch
// and update each lock's Lease by name and to create Leases, so that a Role narrowed
// with resourceNames to the Pod's locks passes), SIGTERM handling, and, at start,
// before the socket answers (so before the startup probe passes and the Pod's other
// containers start), a copy of the leasehold client into the socket volume for every
// container of the Pod (cli.go: InstallCLI, atomic, mode 0755; a failure is logged,
// never fatal). cmd/leasehold-agent only parses flags into Options and calls Run.
//
// What it guarantees: on SIGTERM (ctx cancelled) the event streams get a "shutdown"
// event, every hold is released (one conditional write per held lock, all at once,
// bounded by --shutdown-timeout), then the listeners close and Run returns.
//
// What it does NOT guarantee: releases on SIGKILL or a node crash; those locks are
// free after lease-duration. Kubernetes Events are best effort (client-go's
// broadcaster may drop or aggregate them).
package agent
