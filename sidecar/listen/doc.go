// Package listen opens the agent's listeners: the Unix socket (after the kubelet's
// CreateListener: remove a stale socket, create the directory with tight permissions,
// listen, set the mode) and loopback-only TCP.
//
// What it guarantees: the socket is never world-readable or world-writable (mode 0660
// unless asked for less); TCP listeners bind a loopback address only, and a
// non-loopback address is refused with an error.
//
// What it does NOT guarantee: that a socket path in use by a live process is left
// alone: like the kubelet, it removes whatever is at the path.
package listen
