package contract

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxLockNameLength is the longest name a Lease, and so a lock, may have (a DNS-1123
// subdomain).
const MaxLockNameLength = 253

// MaxSemaphoreSize bounds N in name=N: each slot is a Lease, watched by every Pod that
// declares the semaphore, so N costs N watches per Pod.
const MaxSemaphoreSize = 64

// ErrLockName is what CheckLockName and CheckSemaphore return (wrapped) for a name
// that cannot be a Lease's.
var ErrLockName = errors.New("not a valid Lease name: use lowercase letters, digits, '-' and '.', " +
	"starting and ending with a letter or digit, at most 253 characters")

// ErrSemaphoreSize is what CheckSemaphore returns (wrapped) for an N out of range.
var ErrSemaphoreSize = fmt.Errorf("N must be a whole number from 1 to %d (each slot is a Lease that every Pod watches)", MaxSemaphoreSize)

// CheckLockName says whether name can be a lock's: a lock is the Lease of that name,
// so it must be a DNS-1123 subdomain, as k8s.io/apimachinery's
// validation.IsDNS1123Subdomain checks it. It is written out here, and not imported,
// so that this package stays a leaf of the standard library (the leasehold client
// copied into every Pod links it); TestLockNameAsApimachinery holds the two together.
func CheckLockName(name string) error {
	if !isDNS1123Subdomain(name) {
		return fmt.Errorf("lock name %q: %w", name, ErrLockName)
	}
	return nil
}

// isDNS1123Subdomain: at most 253 characters, dot-separated labels of
// [a-z0-9]([-a-z0-9]*[a-z0-9])?.
func isDNS1123Subdomain(s string) bool {
	if s == "" || len(s) > MaxLockNameLength {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !isDNS1123LabelChars(label) {
			return false
		}
	}
	return true
}

// isDNS1123LabelChars: [a-z0-9]([-a-z0-9]*[a-z0-9])?, with no length limit (a
// subdomain bounds only its whole length).
func isDNS1123LabelChars(s string) bool {
	if s == "" {
		return false
	}
	alnum := func(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
	for i := 0; i < len(s); i++ {
		if c := s[i]; !alnum(c) && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// SlotName is the Lease of slot i (1..N) of semaphore name.
func SlotName(name string, i int) string { return name + "." + strconv.Itoa(i) }

// CheckSemaphore says whether name=size is a semaphore the agent can serve: size from
// 1 to MaxSemaphoreSize, and every slot's Lease name valid.
func CheckSemaphore(name string, size int) error {
	if size < 1 || size > MaxSemaphoreSize {
		return fmt.Errorf("%s=%d: %w", name, size, ErrSemaphoreSize)
	}
	if !isDNS1123Subdomain(name) || !isDNS1123Subdomain(SlotName(name, size)) {
		return fmt.Errorf("semaphore name %q (its slots are the Leases %s .. %s): %w",
			name, SlotName(name, 1), SlotName(name, size), ErrLockName)
	}
	return nil
}

// Identity is the holder identity of the agent of Pod name with uid: unique per Pod
// incarnation, and what the admission policy checks a writer against.
func Identity(podName, podUID string) string { return podName + "_" + podUID }

// PodOf is the Pod name of an agent's holder identity; ok is false for identities
// that are not "<pod-name>_<pod-uid>" (client-go electors, hostnames).
func PodOf(identity string) (pod string, ok bool) {
	i := strings.LastIndexByte(identity, '_')
	if i <= 0 || i == len(identity)-1 {
		return "", false
	}
	pod, uid := identity[:i], identity[i+1:]
	if !isDNS1123Subdomain(pod) || !isUID(uid) {
		return "", false
	}
	return pod, true
}

// isUID: a Kubernetes object UID, an RFC 4122 UUID in its canonical 36-character
// lowercase form (uuid.Parse would also take the urn: and {} forms, which no UID has).
func isUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		default:
			return false
		}
	}
	return true
}
