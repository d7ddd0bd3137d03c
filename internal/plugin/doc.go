// Package plugin is `kubectl leasehold`: it lists the Leases that Leasehold agents
// manage (lock, holder Pod, fencing token, age, time left, mode), follows them with
// --watch, and force-releases one after confirmation.
//
// What it guarantees: the listing is a snapshot of the Lease objects as the API server
// has them. "Time left" is computed from the Lease's renewTime and the local clock, so
// clock skew between this machine and the holder shows up in it; the agents themselves
// never rely on remote clocks.
//
// What it does not guarantee: a force-release is a conditional write that ends the
// holder's lease record, but it cannot stop a process that is already inside its
// critical section. The holder's agent stops reporting "held" as soon as it sees the
// change (it watches its Leases) and at the latest at its renew deadline; only a
// downstream store that checks fencing tokens is protected from a late write.
package plugin
