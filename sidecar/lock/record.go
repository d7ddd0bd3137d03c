package lock

import (
	coordinationv1 "k8s.io/api/coordination/v1"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/internal/leaserecord"
)

// Record is a Lease's spec in client-go's LeaseLock shape (holderIdentity,
// leaseDurationSeconds, acquireTime, renewTime, leaseTransitions): leaserecord's, the
// one place that reads and writes it, for the engine and for kubectl leasehold.
type Record = leaserecord.Record

// RecordOf reads the record of lease (the zero Record for nil or an empty spec).
func RecordOf(lease *coordinationv1.Lease) Record { return leaserecord.Of(lease) }

// Identity is the holder identity of the agent of Pod name with uid (the contract's).
func Identity(podName, podUID string) string { return contract.Identity(podName, podUID) }

// PodOf is the Pod name of an agent's holder identity; ok is false for identities
// that are not "<pod-name>_<pod-uid>" (the contract's).
func PodOf(identity string) (pod string, ok bool) { return contract.PodOf(identity) }
