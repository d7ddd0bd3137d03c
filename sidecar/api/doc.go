// Package api is the agent's local HTTP API v1 (handlers only): it decodes requests,
// asks the lock engine through the Engine interface, and encodes answers. It knows
// nothing of sockets, Kubernetes clients or Leases.
//
// What it guarantees: every error is JSON {"error": "...", "lock": "..."} with a message
// that says what was wrong and how to fix it, and a status code that tells the cases
// apart: 404 undeclared lock or unknown endpoint, 409 not acquired on a try or not held,
// 408 wait timed out (or request body too slow), 400 bad input, 413 body too large,
// 405 wrong method, 503 API server unreachable, not allowed or shutting down. Bodies
// are capped at MaxBodyBytes and must arrive within BodyTimeout. A bad request touches
// no lock.
//
// What it does NOT guarantee: authentication. Whoever can connect to the socket (mode
// 0660) or to the loopback port can take and release the Pod's locks; the Pod is the
// holder, so any client of the Pod may release the Pod's hold.
package api
