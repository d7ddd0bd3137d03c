package webhook

import (
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/internal/contract/podannotations"
)

// The annotation keys, defaults and limits are the contract's (internal/contract),
// defined there once; these names are the webhook's spelling of the same constants.
const (
	AnnotationPrefix        = contract.AnnotationPrefix
	AnnotationLocks         = contract.AnnotationLocks
	AnnotationLeader        = contract.AnnotationLeader
	AnnotationSemaphores    = contract.AnnotationSemaphores
	AnnotationLeaseDuration = contract.AnnotationLeaseDuration
	AnnotationRenewDeadline = contract.AnnotationRenewDeadline
	AnnotationRetryPeriod   = contract.AnnotationRetryPeriod
	AnnotationGrace         = contract.AnnotationGrace
	AnnotationTCPPort       = contract.AnnotationTCPPort
	AnnotationMetrics       = contract.AnnotationMetrics
	AnnotationInject        = contract.AnnotationInject
	AnnotationStatus        = contract.AnnotationStatus
	StatusInjected          = contract.StatusInjected

	DefaultLeaseDuration = contract.DefaultLeaseDuration
	DefaultRenewDeadline = contract.DefaultRenewDeadline
	DefaultRetryPeriod   = contract.DefaultRetryPeriod
	DefaultGrace         = contract.DefaultGrace
	MaxLeaseDuration     = contract.MaxLeaseDuration
)

// Config is what a Pod's annotations ask of the agent (podannotations.Config).
type Config = podannotations.Config

// Semaphore is one name=N of leasehold.io/semaphores (podannotations.Semaphore).
type Semaphore = podannotations.Semaphore

// Wanted reports whether the annotations ask for an agent: a lock annotation is present
// and the Pod has not opted out with leasehold.io/inject: "false".
func Wanted(a map[string]string) bool { return podannotations.Wanted(a) }

// HasLeaseholdAnnotations reports whether any key carries AnnotationPrefix.
func HasLeaseholdAnnotations(a map[string]string) bool {
	return podannotations.HasLeaseholdAnnotations(a)
}

// ParseAnnotations turns a Pod's annotations into a Config by the contract's rules
// (podannotations.Parse): every problem is a field error that names the annotation, the
// bad value and the fix.
func ParseAnnotations(a map[string]string) (*Config, field.ErrorList) { return podannotations.Parse(a) }

var annotationsPath = field.NewPath("metadata", "annotations")

// invalid is a field error of the annotation key, for the checks of a Pod's spec
// against its annotations (inject.go).
func invalid(key, value, detail string) *field.Error {
	return field.Invalid(annotationsPath.Key(key), value, detail)
}
