// Package kubectl is `kubectl leasehold`: it lists the Leases that Leasehold agents
// manage (lock, holder Pod, fencing token, age, time left, mode), follows them with
// --watch, force-releases one after confirmation, and prints (`rbac`) the
// least-privilege ServiceAccount, Role and RoleBinding of a workload's agents from the
// locks its Pod template declares.
//
// Under the admission policy of manifests/base, a force-release by a ServiceAccount
// needs the verb force-release on leases (ClusterRole leasehold-operator); people need
// only update.
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
//
// It reads annotations with internal/contract/podannotations and Lease records with
// internal/leaserecord, the same code the webhook and the agents use, and links neither
// the webhook nor the lock engine (TestLayers).
package kubectl
