package webhook

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// AnnotationPrefix is the prefix of every Leasehold annotation. Any key with this prefix
// that is not one of the keys below is refused, so a typo never passes silently.
const AnnotationPrefix = "leasehold.io/"

const (
	// AnnotationLocks lists, comma-separated, the lock names the app takes on demand
	// (mutexes). Each name is the name of a coordination.k8s.io/v1 Lease in the Pod's
	// namespace, so it must be a DNS-1123 subdomain.
	AnnotationLocks = AnnotationPrefix + "locks"

	// AnnotationLeader lists, comma-separated, the lock names the agent holds
	// continuously while the Pod lives (leader election).
	AnnotationLeader = AnnotationPrefix + "leader"
	// AnnotationSemaphores lists, comma-separated, counting locks as name=N: up to N
	// holders at once, each on a slot Lease name.1 .. name.N.
	AnnotationSemaphores = AnnotationPrefix + "semaphores"

	// AnnotationLeaseDuration is how long a Lease is valid after its last renewal, in Go
	// duration syntax and whole seconds (the Lease stores seconds). Default 15s.
	AnnotationLeaseDuration = AnnotationPrefix + "lease-duration"

	// AnnotationRenewDeadline is how long the agent keeps reporting a hold without a
	// successful renewal. It must be shorter than the lease duration. Default 10s.
	AnnotationRenewDeadline = AnnotationPrefix + "renew-deadline"

	// AnnotationRetryPeriod is how often the agent retries acquiring and renewing.
	// The renew deadline must exceed 1.2 times it (client-go's jitter). Default 2s.
	AnnotationRetryPeriod = AnnotationPrefix + "retry-period"

	// AnnotationGrace is how long a hold may stay in jeopardy (renew-deadline passed
	// while the API server was unavailable; the hold is not held but may resume with
	// the same token) before it is lost. Go duration syntax; "0s" turns jeopardy off.
	// Default 30s (contract.DefaultGrace).
	AnnotationGrace = AnnotationPrefix + "grace"

	// AnnotationTCPPort turns on the agent's loopback-only HTTP API on 127.0.0.1:<port>
	// (1024-65535). Off when absent: the Unix socket is the default transport.
	AnnotationTCPPort = AnnotationPrefix + "tcp-port"

	// AnnotationMetrics set to "false" turns the agent's metrics listener off for this
	// Pod (no port, no scrape annotations). "true" (the default) serves them on the
	// Pod's IP, on the port the webhook's --agent-metrics-bind-address names.
	AnnotationMetrics = AnnotationPrefix + "metrics"

	// AnnotationInject set to "false" opts a Pod out of injection even when it names
	// locks. "true" is accepted and means the same as absent.
	AnnotationInject = AnnotationPrefix + "inject"

	// AnnotationStatus is written by the webhook ("injected"), never by users.
	AnnotationStatus = AnnotationPrefix + "status"

	// StatusInjected is the value of AnnotationStatus on an injected Pod.
	StatusInjected = "injected"
)

// Defaults for the timing annotations: client-go's leader election defaults.
const (
	DefaultLeaseDuration = contract.DefaultLeaseDuration
	DefaultRenewDeadline = contract.DefaultRenewDeadline
	DefaultRetryPeriod   = contract.DefaultRetryPeriod
	DefaultGrace         = contract.DefaultGrace

	// MaxLeaseDuration bounds every timing annotation (contract.MaxLeaseDuration).
	MaxLeaseDuration = contract.MaxLeaseDuration
)

// knownAnnotations are all the keys under AnnotationPrefix that the webhook accepts.
var knownAnnotations = []string{
	AnnotationLocks, AnnotationLeader, AnnotationSemaphores, AnnotationLeaseDuration, AnnotationRenewDeadline,
	AnnotationRetryPeriod, AnnotationGrace, AnnotationTCPPort, AnnotationMetrics, AnnotationInject, AnnotationStatus,
}

// Config is what a Pod's annotations ask of the agent.
type Config struct {
	// Locks are the on-demand mutexes, in annotation order.
	Locks []string
	// Leader are the locks held continuously, in annotation order.
	Leader []string
	// Semaphores are the counting locks, in annotation order.
	Semaphores []Semaphore

	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
	// Grace is how long a hold may stay in jeopardy; GraceSet says that the Pod's
	// annotation gave it (only then is it on the agent's command line).
	Grace    time.Duration
	GraceSet bool

	// TCPPort is the loopback HTTP port, 0 when off.
	TCPPort int32

	// MetricsOff is true when leasehold.io/metrics is "false".
	MetricsOff bool
}

// Semaphore is one name=N of leasehold.io/semaphores.
type Semaphore struct {
	Name string
	Size int
}

// LeaseNames are the Leases the agent of cfg writes: its locks, leader locks and every
// semaphore slot (what its Role must grant by name).
func (cfg *Config) LeaseNames() []string {
	out := append(append([]string{}, cfg.Locks...), cfg.Leader...)
	for _, s := range cfg.Semaphores {
		for i := 1; i <= s.Size; i++ {
			out = append(out, lock.SlotName(s.Name, i))
		}
	}
	return out
}

// Wanted reports whether the annotations ask for an agent: a lock annotation is present
// and the Pod has not opted out with leasehold.io/inject: "false".
func Wanted(annotations map[string]string) bool {
	if annotations[AnnotationInject] == "false" {
		return false
	}
	_, locks := annotations[AnnotationLocks]
	_, leader := annotations[AnnotationLeader]
	_, sems := annotations[AnnotationSemaphores]
	return locks || leader || sems
}

// HasLeaseholdAnnotations reports whether any key carries AnnotationPrefix.
func HasLeaseholdAnnotations(annotations map[string]string) bool {
	for k := range annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			return true
		}
	}
	return false
}

var annotationsPath = field.NewPath("metadata", "annotations")

func invalid(key, value, detail string) *field.Error {
	return field.Invalid(annotationsPath.Key(key), value, detail)
}

// ParseAnnotations turns a Pod's annotations into a Config. Every problem is reported
// (not only the first) as a field error that names the annotation, the bad value and
// the fix. Callers decide with Wanted whether the Pod asks for an agent at all; a
// Pod with leasehold.io/* keys but no lock annotation is an error here, since its
// timing or port annotations would otherwise be silently ignored.
func ParseAnnotations(annotations map[string]string) (*Config, field.ErrorList) {
	var errs field.ErrorList
	cfg := &Config{}

	// Unknown keys first: a typo of leasehold.io/locks must not leave a Pod without
	// its agent.
	var keys []string
	for k := range annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !isKnown(k) {
			errs = append(errs, invalid(k, annotations[k], fmt.Sprintf(
				"unknown Leasehold annotation key; fix: did you mean %q? Known keys: %s",
				closest(k), strings.Join(knownAnnotations, ", "))))
		}
	}

	if v, ok := annotations[AnnotationInject]; ok && v != "true" && v != "false" {
		errs = append(errs, invalid(AnnotationInject, v, `fix: use "false" to opt out or remove the annotation`))
	}
	if v, ok := annotations[AnnotationMetrics]; ok {
		switch v {
		case "true":
		case "false":
			cfg.MetricsOff = true
		default:
			errs = append(errs, invalid(AnnotationMetrics, v,
				`fix: use "false" to turn the agent's metrics endpoint off, or "true" (the default) to serve them on the Pod's IP`))
		}
	}
	if v, ok := annotations[AnnotationStatus]; ok && v != StatusInjected {
		errs = append(errs, invalid(AnnotationStatus, v,
			"this annotation is written by the webhook; fix: remove it"))
	}

	seen := map[string]string{} // lock name -> annotation that first named it
	cfg.Locks, errs = parseNames(annotations, AnnotationLocks, seen, errs)
	cfg.Leader, errs = parseNames(annotations, AnnotationLeader, seen, errs)
	cfg.Semaphores, errs = parseSemaphores(annotations, seen, errs)
	errs = checkSlotNames(annotations, cfg, errs)
	_, hasLocks := annotations[AnnotationLocks]
	_, hasLeader := annotations[AnnotationLeader]
	_, hasSems := annotations[AnnotationSemaphores]
	if !hasLocks && !hasLeader && !hasSems {
		for _, k := range []string{AnnotationLeaseDuration, AnnotationRenewDeadline, AnnotationRetryPeriod, AnnotationGrace, AnnotationTCPPort, AnnotationMetrics} {
			if v, ok := annotations[k]; ok {
				errs = append(errs, invalid(k, v, fmt.Sprintf("the Pod names no lock; fix: add %s, %s or %s, or remove %s",
					AnnotationLocks, AnnotationLeader, AnnotationSemaphores, k)))
			}
		}
	} else if len(cfg.Locks) == 0 && len(cfg.Leader) == 0 && len(cfg.Semaphores) == 0 && len(errs) == 0 {
		key := AnnotationLocks
		switch {
		case hasLocks:
		case hasLeader:
			key = AnnotationLeader
		default:
			key = AnnotationSemaphores
		}
		errs = append(errs, invalid(key, annotations[key],
			"no lock name given; fix: list at least one lock name (e.g. \"db-migration\") or remove the annotation"))
	}

	var durOK bool
	cfg.LeaseDuration, durOK, errs = parseDuration(annotations, AnnotationLeaseDuration, DefaultLeaseDuration, true, errs)
	okAll := durOK
	cfg.RenewDeadline, durOK, errs = parseDuration(annotations, AnnotationRenewDeadline, DefaultRenewDeadline, false, errs)
	okAll = okAll && durOK
	cfg.RetryPeriod, durOK, errs = parseDuration(annotations, AnnotationRetryPeriod, DefaultRetryPeriod, false, errs)
	okAll = okAll && durOK
	if okAll {
		errs = checkTimings(annotations, cfg, errs)
	}
	cfg.Grace, cfg.GraceSet, errs = parseGrace(annotations, errs)

	if v, ok := annotations[AnnotationTCPPort]; ok {
		p, err := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
		switch {
		case err != nil:
			errs = append(errs, invalid(AnnotationTCPPort, v,
				"not a port number; fix: use a number from 1024 to 65535 (e.g. \"8970\"), or remove the annotation to use only the Unix socket"))
		case p < 1024 || p > 65535:
			errs = append(errs, invalid(AnnotationTCPPort, v,
				"port out of range (the agent runs without privileges); fix: use a number from 1024 to 65535, or remove the annotation"))
		default:
			cfg.TCPPort = int32(p)
		}
	}

	if len(errs) > 0 {
		return nil, errs
	}
	return cfg, nil
}

func isKnown(k string) bool {
	for _, known := range knownAnnotations {
		if k == known {
			return true
		}
	}
	return false
}

func parseNames(annotations map[string]string, key string, seen map[string]string, errs field.ErrorList) ([]string, field.ErrorList) {
	v, ok := annotations[key]
	if !ok {
		return nil, errs
	}
	var names []string
	if strings.TrimSpace(v) == "" {
		return nil, errs
	}
	for _, raw := range strings.Split(v, ",") {
		name := strings.TrimSpace(raw)
		switch {
		case name == "":
			errs = append(errs, invalid(key, v, "empty lock name between commas; fix: remove the extra comma"))
			continue
		case len(validation.IsDNS1123Subdomain(name)) > 0:
			errs = append(errs, invalid(key, v, fmt.Sprintf(
				"lock name %q is not a valid Lease name; fix: use lowercase letters, digits, '-' and '.', "+
					"starting and ending with a letter or digit, at most 253 characters (e.g. %q)",
				name, suggestName(name))))
			continue
		}
		if first, dup := seen[name]; dup {
			if first == key {
				errs = append(errs, invalid(key, v, fmt.Sprintf("lock name %q is listed twice; fix: list it once", name)))
			} else {
				errs = append(errs, invalid(key, v, fmt.Sprintf(
					"lock name %q is also listed in %s; a lock is either on demand (%s) or held continuously (%s); fix: keep it in one of them",
					name, first, AnnotationLocks, AnnotationLeader)))
			}
			continue
		}
		seen[name] = key
		names = append(names, name)
	}
	return names, errs
}

// parseSemaphores parses leasehold.io/semaphores: name=N, comma-separated.
func parseSemaphores(annotations map[string]string, seen map[string]string, errs field.ErrorList) ([]Semaphore, field.ErrorList) {
	key := AnnotationSemaphores
	v, ok := annotations[key]
	if !ok || strings.TrimSpace(v) == "" {
		return nil, errs
	}
	var out []Semaphore
	for _, raw := range strings.Split(v, ",") {
		item := strings.TrimSpace(raw)
		if item == "" {
			errs = append(errs, invalid(key, v, "empty entry between commas; fix: remove the extra comma"))
			continue
		}
		name, num, hasEq := strings.Cut(item, "=")
		name = strings.TrimSpace(name)
		n, err := strconv.Atoi(strings.TrimSpace(num))
		switch {
		case !hasEq:
			errs = append(errs, invalid(key, v, fmt.Sprintf(
				"%q has no =N; fix: write name=N, the number of holders let in at once (e.g. %q)", item, item+"=3")))
			continue
		case err != nil || n < 1 || n > lock.MaxSemaphoreSize:
			errs = append(errs, invalid(key, v, fmt.Sprintf(
				"%q: N must be a whole number from 1 to %d (each slot is a Lease that every Pod watches); fix: e.g. %q",
				item, lock.MaxSemaphoreSize, name+"=3")))
			continue
		case len(validation.IsDNS1123Subdomain(name)) > 0 || len(validation.IsDNS1123Subdomain(lock.SlotName(name, n))) > 0:
			errs = append(errs, invalid(key, v, fmt.Sprintf(
				"semaphore name %q is not a valid Lease name (its slots are the Leases %s .. %s); fix: use lowercase "+
					"letters, digits, '-' and '.', starting and ending with a letter or digit, at most %d characters (e.g. %q)",
				name, lock.SlotName(name, 1), lock.SlotName(name, n), 253-len(lock.SlotName("", n)), suggestName(name))))
			continue
		}
		if first, dup := seen[name]; dup {
			if first == key {
				errs = append(errs, invalid(key, v, fmt.Sprintf("semaphore %q is listed twice; fix: list it once", name)))
			} else {
				errs = append(errs, invalid(key, v, fmt.Sprintf(
					"semaphore %q is also listed in %s; a name is one kind of lock; fix: keep it in one of them", name, first)))
			}
			continue
		}
		seen[name] = key
		out = append(out, Semaphore{Name: name, Size: n})
	}
	return out, errs
}

// checkSlotNames refuses a lock or leader lock named like a semaphore's slot Lease.
func checkSlotNames(annotations map[string]string, cfg *Config, errs field.ErrorList) field.ErrorList {
	names := map[string]string{}
	for _, n := range cfg.Locks {
		names[n] = AnnotationLocks
	}
	for _, n := range cfg.Leader {
		names[n] = AnnotationLeader
	}
	for _, s := range cfg.Semaphores {
		for i := 1; i <= s.Size; i++ {
			if key, clash := names[lock.SlotName(s.Name, i)]; clash {
				errs = append(errs, invalid(AnnotationSemaphores, annotations[AnnotationSemaphores], fmt.Sprintf(
					"semaphore %s's slot %d is the Lease %q, which %s also names as a lock; fix: rename the lock or the semaphore",
					s.Name, i, lock.SlotName(s.Name, i), key)))
			}
		}
	}
	return errs
}

// parseDuration returns the annotation's duration or def, and whether it is usable.
func parseDuration(annotations map[string]string, key string, def time.Duration, wholeSeconds bool, errs field.ErrorList) (time.Duration, bool, field.ErrorList) {
	v, ok := annotations[key]
	if !ok {
		return def, true, errs
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	switch {
	case err != nil:
		return 0, false, append(errs, invalid(key, v, fmt.Sprintf(
			"not a duration; fix: use Go duration syntax with a unit, e.g. %q (default %s)", def.String(), def)))
	case d < time.Second:
		return 0, false, append(errs, invalid(key, v, fmt.Sprintf(
			"must be at least 1s; fix: use e.g. %q (default %s)", def.String(), def)))
	case d > MaxLeaseDuration:
		return 0, false, append(errs, invalid(key, v, fmt.Sprintf(
			"must be at most %s; fix: use e.g. %q (default %s)", MaxLeaseDuration, def.String(), def)))
	case wholeSeconds && d%time.Second != 0:
		return 0, false, append(errs, invalid(key, v, fmt.Sprintf(
			"must be whole seconds (a Lease stores leaseDurationSeconds); fix: use %q", d.Round(time.Second).String())))
	}
	return d, true, errs
}

// parseGrace reads leasehold.io/grace: a Go duration from 0 (no jeopardy) to
// MaxLeaseDuration.
func parseGrace(annotations map[string]string, errs field.ErrorList) (time.Duration, bool, field.ErrorList) {
	v, ok := annotations[AnnotationGrace]
	if !ok {
		return DefaultGrace, false, errs
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	switch {
	case err != nil:
		return 0, false, append(errs, invalid(AnnotationGrace, v, fmt.Sprintf(
			"not a duration; fix: use Go duration syntax with a unit, e.g. %q (default %s), or \"0s\" to turn jeopardy off", "1m", DefaultGrace)))
	case d < 0:
		return 0, false, append(errs, invalid(AnnotationGrace, v, fmt.Sprintf(
			"must not be negative; fix: use e.g. %q (default %s), or \"0s\" to turn jeopardy off", "1m", DefaultGrace)))
	case d > MaxLeaseDuration:
		return 0, false, append(errs, invalid(AnnotationGrace, v, fmt.Sprintf(
			"must be at most %s; fix: use e.g. %q (default %s)", MaxLeaseDuration, "1m", DefaultGrace)))
	}
	return d, true, errs
}

func describe(annotations map[string]string, key string, d time.Duration) string {
	if _, ok := annotations[key]; ok {
		return fmt.Sprintf("%s (%s)", key, d)
	}
	return fmt.Sprintf("%s (%s, the default)", key, d)
}

// checkTimings applies client-go's leader election rules.
func checkTimings(annotations map[string]string, cfg *Config, errs field.ErrorList) field.ErrorList {
	// Blame the annotation the user set; when both are set, blame the later one.
	blame := func(a, b string, da, db time.Duration) (string, string) {
		if _, ok := annotations[b]; ok {
			return b, annotations[b]
		}
		if _, ok := annotations[a]; ok {
			return a, annotations[a]
		}
		return b, db.String()
	}
	for _, rule := range contract.BrokenTimingRules(cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod) {
		switch rule {
		case contract.LeaseAboveRenew:
			k, v := blame(AnnotationLeaseDuration, AnnotationRenewDeadline, cfg.LeaseDuration, cfg.RenewDeadline)
			errs = append(errs, invalid(k, v, fmt.Sprintf("%s must be greater than %s, %s; fix: raise %s or lower %s",
				describe(annotations, AnnotationLeaseDuration, cfg.LeaseDuration),
				describe(annotations, AnnotationRenewDeadline, cfg.RenewDeadline),
				rule.Why(), AnnotationLeaseDuration, AnnotationRenewDeadline)))
		case contract.RenewAboveRetry:
			k, v := blame(AnnotationRenewDeadline, AnnotationRetryPeriod, cfg.RenewDeadline, cfg.RetryPeriod)
			errs = append(errs, invalid(k, v, fmt.Sprintf("%s must be greater than %v x %s, %s; fix: raise %s or lower %s",
				describe(annotations, AnnotationRenewDeadline, cfg.RenewDeadline), contract.JitterFactor,
				describe(annotations, AnnotationRetryPeriod, cfg.RetryPeriod),
				rule.Why(), AnnotationRenewDeadline, AnnotationRetryPeriod)))
		}
	}
	return errs
}

// suggestName lowercases a name and replaces what a Lease name cannot hold.
func suggestName(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			b.WriteRune(r)
		default:
			b.WriteRune('-')
		}
	}
	s := strings.Trim(b.String(), "-.")
	if len(s) > validation.DNS1123SubdomainMaxLength {
		s = strings.Trim(s[:validation.DNS1123SubdomainMaxLength], "-.")
	}
	if s == "" {
		return "my-lock"
	}
	return s
}

// closest returns the known annotation nearest to k by edit distance.
func closest(k string) string {
	best, bestD := knownAnnotations[0], -1
	for _, known := range knownAnnotations {
		if d := editDistance(k, known); bestD < 0 || d < bestD {
			best, bestD = known, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 256 {
		a = a[:256]
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
