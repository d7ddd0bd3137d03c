// Package podannotations reads a Pod's Leasehold annotations (the keys of
// internal/contract) into what they ask of the agent, with the contract's rules: the
// one reading that the webhook admits Pods by and that `kubectl leasehold rbac`
// renders Roles from. Every problem is a field error that names the annotation, the
// bad value and the fix.
//
// It imports the contract and k8s.io/apimachinery's field errors, nothing else of
// the project (TestLayers).
package podannotations

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/leasehold/leasehold/internal/contract"
)

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
			out = append(out, contract.SlotName(s.Name, i))
		}
	}
	return out
}

// Wanted reports whether the annotations ask for an agent: a lock annotation is present
// and the Pod has not opted out with leasehold.io/inject: "false".
func Wanted(annotations map[string]string) bool {
	if annotations[contract.AnnotationInject] == "false" {
		return false
	}
	_, locks := annotations[contract.AnnotationLocks]
	_, leader := annotations[contract.AnnotationLeader]
	_, sems := annotations[contract.AnnotationSemaphores]
	return locks || leader || sems
}

// HasLeaseholdAnnotations reports whether any key carries contract.AnnotationPrefix.
func HasLeaseholdAnnotations(annotations map[string]string) bool {
	for k := range annotations {
		if strings.HasPrefix(k, contract.AnnotationPrefix) {
			return true
		}
	}
	return false
}

var annotationsPath = field.NewPath("metadata", "annotations")

func invalid(key, value, detail string) *field.Error {
	return field.Invalid(annotationsPath.Key(key), value, detail)
}

// Parse turns a Pod's annotations into a Config. Every problem is reported
// (not only the first) as a field error that names the annotation, the bad value and
// the fix. Callers decide with Wanted whether the Pod asks for an agent at all; a
// Pod with leasehold.io/* keys but no lock annotation is an error here, since its
// timing or port annotations would otherwise be silently ignored.
func Parse(annotations map[string]string) (*Config, field.ErrorList) {
	var errs field.ErrorList
	cfg := &Config{}

	// Unknown keys first: a typo of leasehold.io/locks must not leave a Pod without
	// its agent.
	var keys []string
	for k := range annotations {
		if strings.HasPrefix(k, contract.AnnotationPrefix) {
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

	if v, ok := annotations[contract.AnnotationInject]; ok && v != "true" && v != "false" {
		errs = append(errs, invalid(contract.AnnotationInject, v, `fix: use "false" to opt out or remove the annotation`))
	}
	if v, ok := annotations[contract.AnnotationMetrics]; ok {
		switch v {
		case "true":
		case "false":
			cfg.MetricsOff = true
		default:
			errs = append(errs, invalid(contract.AnnotationMetrics, v,
				`fix: use "false" to turn the agent's metrics endpoint off, or "true" (the default) to serve them on the Pod's IP`))
		}
	}
	if v, ok := annotations[contract.AnnotationStatus]; ok && v != contract.StatusInjected {
		errs = append(errs, invalid(contract.AnnotationStatus, v,
			"this annotation is written by the webhook; fix: remove it"))
	}

	seen := map[string]string{} // lock name -> annotation that first named it
	cfg.Locks, errs = parseNames(annotations, contract.AnnotationLocks, seen, errs)
	cfg.Leader, errs = parseNames(annotations, contract.AnnotationLeader, seen, errs)
	cfg.Semaphores, errs = parseSemaphores(annotations, seen, errs)
	errs = checkSlotNames(annotations, cfg, errs)
	_, hasLocks := annotations[contract.AnnotationLocks]
	_, hasLeader := annotations[contract.AnnotationLeader]
	_, hasSems := annotations[contract.AnnotationSemaphores]
	if !hasLocks && !hasLeader && !hasSems {
		for _, k := range []string{contract.AnnotationLeaseDuration, contract.AnnotationRenewDeadline, contract.AnnotationRetryPeriod, contract.AnnotationGrace, contract.AnnotationTCPPort, contract.AnnotationMetrics} {
			if v, ok := annotations[k]; ok {
				errs = append(errs, invalid(k, v, fmt.Sprintf("the Pod names no lock; fix: add %s, %s or %s, or remove %s",
					contract.AnnotationLocks, contract.AnnotationLeader, contract.AnnotationSemaphores, k)))
			}
		}
	} else if len(cfg.Locks) == 0 && len(cfg.Leader) == 0 && len(cfg.Semaphores) == 0 && len(errs) == 0 {
		key := contract.AnnotationLocks
		switch {
		case hasLocks:
		case hasLeader:
			key = contract.AnnotationLeader
		default:
			key = contract.AnnotationSemaphores
		}
		errs = append(errs, invalid(key, annotations[key],
			"no lock name given; fix: list at least one lock name (e.g. \"db-migration\") or remove the annotation"))
	}

	var leaseOK, renewOK, retryOK bool
	cfg.LeaseDuration, _, leaseOK, errs = parseTiming(annotations, contract.LeaseDuration, contract.DefaultLeaseDuration, errs)
	cfg.RenewDeadline, _, renewOK, errs = parseTiming(annotations, contract.RenewDeadline, contract.DefaultRenewDeadline, errs)
	cfg.RetryPeriod, _, retryOK, errs = parseTiming(annotations, contract.RetryPeriod, contract.DefaultRetryPeriod, errs)
	if leaseOK && renewOK && retryOK {
		errs = checkTimings(annotations, cfg, errs)
	}
	cfg.Grace, cfg.GraceSet, _, errs = parseTiming(annotations, contract.Grace, contract.DefaultGrace, errs)

	if v, ok := annotations[contract.AnnotationTCPPort]; ok {
		p, err := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
		switch {
		case err != nil:
			errs = append(errs, invalid(contract.AnnotationTCPPort, v,
				"not a port number; fix: use a number from 1024 to 65535 (e.g. \"8970\"), or remove the annotation to use only the Unix socket"))
		case contract.CheckTCPPort(p) != nil:
			errs = append(errs, invalid(contract.AnnotationTCPPort, v,
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

// knownAnnotations are contract.KnownAnnotations, read once.
var knownAnnotations = contract.KnownAnnotations()

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
		case contract.CheckLockName(name) != nil:
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
					name, first, contract.AnnotationLocks, contract.AnnotationLeader)))
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
	key := contract.AnnotationSemaphores
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
		semErr := contract.CheckSemaphore(name, n)
		switch {
		case !hasEq:
			errs = append(errs, invalid(key, v, fmt.Sprintf(
				"%q has no =N; fix: write name=N, the number of holders let in at once (e.g. %q)", item, item+"=3")))
			continue
		case err != nil || errors.Is(semErr, contract.ErrSemaphoreSize):
			errs = append(errs, invalid(key, v, fmt.Sprintf(
				"%q: N must be a whole number from 1 to %d (each slot is a Lease that every Pod watches); fix: e.g. %q",
				item, contract.MaxSemaphoreSize, name+"=3")))
			continue
		case semErr != nil:
			errs = append(errs, invalid(key, v, fmt.Sprintf(
				"semaphore name %q is not a valid Lease name (its slots are the Leases %s .. %s); fix: use lowercase "+
					"letters, digits, '-' and '.', starting and ending with a letter or digit, at most %d characters (e.g. %q)",
				name, contract.SlotName(name, 1), contract.SlotName(name, n), contract.MaxLockNameLength-len(contract.SlotName("", n)), suggestName(name))))
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
		names[n] = contract.AnnotationLocks
	}
	for _, n := range cfg.Leader {
		names[n] = contract.AnnotationLeader
	}
	for _, s := range cfg.Semaphores {
		for i := 1; i <= s.Size; i++ {
			if key, clash := names[contract.SlotName(s.Name, i)]; clash {
				errs = append(errs, invalid(contract.AnnotationSemaphores, annotations[contract.AnnotationSemaphores], fmt.Sprintf(
					"semaphore %s's slot %d is the Lease %q, which %s also names as a lock; fix: rename the lock or the semaphore",
					s.Name, i, contract.SlotName(s.Name, i), key)))
			}
		}
	}
	return errs
}

// parseTiming returns the annotation of timing t, or def; whether the Pod set it; and
// whether it is usable (within contract.CheckTiming's limits).
func parseTiming(annotations map[string]string, t contract.Timing, def time.Duration, errs field.ErrorList) (time.Duration, bool, bool, field.ErrorList) {
	key := contract.AnnotationPrefix + string(t)
	v, set := annotations[key]
	if !set {
		return def, false, true, errs
	}
	example, orOff := def.String(), ""
	if t == contract.Grace {
		example, orOff = "1m", `, or "0s" to turn jeopardy off`
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, true, false, append(errs, invalid(key, v, fmt.Sprintf(
			"not a duration; fix: use Go duration syntax with a unit, e.g. %q (default %s)%s", example, def, orOff)))
	}
	var te *contract.TimingError
	if errors.As(contract.CheckTiming(t, d), &te) {
		fix := fmt.Sprintf("use e.g. %q (default %s)", example, def)
		switch te.Limit {
		case contract.NotWholeSeconds:
			fix = fmt.Sprintf("use %q", d.Round(time.Second).String())
		case contract.Negative:
			fix += orOff
		}
		return 0, true, false, append(errs, invalid(key, v, te.Rule()+"; fix: "+fix))
	}
	return d, true, true, errs
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
			k, v := blame(contract.AnnotationLeaseDuration, contract.AnnotationRenewDeadline, cfg.LeaseDuration, cfg.RenewDeadline)
			errs = append(errs, invalid(k, v, fmt.Sprintf("%s must be greater than %s, %s; fix: raise %s or lower %s",
				describe(annotations, contract.AnnotationLeaseDuration, cfg.LeaseDuration),
				describe(annotations, contract.AnnotationRenewDeadline, cfg.RenewDeadline),
				rule.Why(), contract.AnnotationLeaseDuration, contract.AnnotationRenewDeadline)))
		case contract.RenewAboveRetry:
			k, v := blame(contract.AnnotationRenewDeadline, contract.AnnotationRetryPeriod, cfg.RenewDeadline, cfg.RetryPeriod)
			errs = append(errs, invalid(k, v, fmt.Sprintf("%s must be greater than %v x %s, %s; fix: raise %s or lower %s",
				describe(annotations, contract.AnnotationRenewDeadline, cfg.RenewDeadline), contract.JitterFactor,
				describe(annotations, contract.AnnotationRetryPeriod, cfg.RetryPeriod),
				rule.Why(), contract.AnnotationRenewDeadline, contract.AnnotationRetryPeriod)))
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
	if len(s) > contract.MaxLockNameLength {
		s = strings.Trim(s[:contract.MaxLockNameLength], "-.")
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
