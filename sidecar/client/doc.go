// Package client is the Go client of the Leasehold agent's local API (v1), the one the
// `leasehold` command uses. An app in a Pod annotated with leasehold.io/locks or
// leasehold.io/leader calls its own agent, a native sidecar in the same Pod, over the
// Unix socket that the webhook names in $LEASEHOLD_SOCKET (or over loopback TCP,
// $LEASEHOLD_URL, with leasehold.io/tcp-port):
//
//	c := client.FromEnv()
//	h, err := c.HoldConnection(ctx, "db-migration", time.Minute, 0) // wait up to a minute
//	if err != nil { ... }                                          // *client.Error: see Status
//	defer h.Close()                                                // ends the hold at once
//	migrate(h.State.Token)                                         // pass the fencing token on
//
// The calls map one to one onto the HTTP API: State and States (GET /v1/locks/...),
// Acquire, Release and Renew (POST .../acquire, .../release?token=N, .../renew?token=N),
// and HoldConnection (POST .../acquire?hold=connection). A non-2xx answer is an *Error
// with the HTTP status (404 lock not declared for this Pod, 409 not acquired on a try
// or a stale token, 408 the wait ran out, 400 bad input, 503 the API server unreachable
// or the agent shutting down) and the agent's message, which says what to fix.
//
// What it guarantees: a Hold from HoldConnection lasts at most as long as its
// connection: closing it, or the process dying, ends the hold at the agent at once, and
// Hold.Ended is closed when the agent ends it first (lost, shutdown). A token from
// Acquire names that hold only: Release and Renew with an older token change nothing
// and get 409 with Reason "StaleToken".
//
// What it links: the standard library, the API's types (sidecar/api/wire: State,
// Event) and the contract's paths; nothing of the lock engine or of client-go, so the
// `leasehold` command copied into every Pod stays small (internal/layers'
// TestBinariesLinkOnlyTheirLayers holds this).
//
// What it does NOT guarantee: retries (every call is one request), nor that a lock is
// still held after the State.ValidFor the agent answered: check it again, or follow
// Hold.Ended, before relying on the hold for longer.
package client
