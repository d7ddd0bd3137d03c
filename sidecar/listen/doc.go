// Package listen opens the agent's listeners: the Unix socket (after the kubelet's
// CreateListener: remove a stale socket, create the directory with tight permissions,
// listen, set the mode) and loopback-only TCP; ConnLimit caps the connections served
// across them.
//
// What it guarantees: the socket is never world-readable or world-writable (mode 0660
// unless asked for less); TCP listeners bind a loopback address only, and a
// non-loopback address is refused with an error; beyond ConnLimit's cap, a new
// connection is answered with HTTP 503 and a JSON error and closed, while the
// connections already served are left alone.
//
// What it does NOT guarantee: that a socket path in use by a live process is left
// alone: like the kubelet, it removes whatever is at the path. Nor that a refused
// client reads its 503: under a flood of refusals (more than 64 being written at
// once) a connection is closed without an answer.
package listen
