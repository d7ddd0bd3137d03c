// Package e2e is Leasehold as a user sees it: on a real one-node cluster (hack/cluster.sh:
// kubelet, containerd, runc, CNI bridge, kube-proxy), Leasehold is installed from
// manifests/ with `kubectl apply -k`, the example app from examples/ is deployed, and the
// tests watch real Pods contend for locks.
//
// The suite is behind the `e2e` build tag because it needs that cluster: run it with
// `make e2e` (or `make test`, which brings the cluster up, runs it and tears it down).
// It reads LEASEHOLD_E2E_KUBECONFIG and fails, never skips, without it.
//
// What it proves: injection (native sidecar first, agent ready before the app, socket
// and env present, restricted profile admitted), mutual exclusion between replicas with
// rising fencing tokens, an init container taking a lock, SIGTERM release on Pod deletion,
// expiry after lease-duration when an agent is killed, exactly one leader, RBAC readiness,
// webhook denials through the real API server, the client at $LEASEHOLD_CLI in an image
// that never had it (run as another UID, in an init and an app container), and Jobs
// (also one made from a CronJob) that complete with their Lease already free, and holds
// that ride out an in-place kube-apiserver restart longer than lease-duration (jeopardy,
// then safe with the same fencing tokens; the waiters take nothing over). It does not
// measure speed: see BENCHMARKS.md.
package e2e
