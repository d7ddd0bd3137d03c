package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Path is where the webhook server serves the injector (and what manifests/ name).
const Path = "/mutate-v1-pod"

// Outcomes of one admission review, the label of the injections counter.
const (
	OutcomeInjected  = "injected"  // the agent was added (or completed on reinvocation)
	OutcomeUnchanged = "unchanged" // already complete: no patch
	OutcomeSkipped   = "skipped"   // not ours: no lock annotation, opted out, or not a CREATE
	OutcomeDenied    = "denied"    // bad annotations or a conflict
	OutcomeErrored   = "errored"   // undecodable request or internal error
)

// Injections counts admission reviews by outcome. It is registered with
// controller-runtime's metrics registry, next to its webhook latency and in-flight
// metrics, and served on the manager's metrics endpoint.
var Injections = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "leasehold_webhook_injections_total",
	Help: "Pod admission reviews handled by the Leasehold injector, by outcome " +
		"(injected, unchanged, skipped, denied, errored).",
}, []string{"outcome"})

func init() {
	metrics.Registry.MustRegister(Injections)
	for _, o := range []string{OutcomeInjected, OutcomeUnchanged, OutcomeSkipped, OutcomeDenied, OutcomeErrored} {
		Injections.WithLabelValues(o)
	}
}

// PodInjector is the admission handler that injects the agent into annotated Pods.
type PodInjector struct {
	Options Options
	decoder admission.Decoder
}

var _ admission.Handler = &PodInjector{}

// NewPodInjector returns a handler for opts.
func NewPodInjector(opts Options) *PodInjector {
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	return &PodInjector{Options: opts, decoder: admission.NewDecoder(scheme)}
}

// Handle follows controller-runtime's defaulter: allow what is not ours, deny bad
// annotations with a message naming annotation, value and fix, inject purely, and
// answer with a JSON patch computed against the request's raw bytes.
//
// It is not admission.WithCustomDefaulter itself, which has the same shape (its
// lossless default, keeping unknown fields, is what dropSchemeRemovals does), because
// a CustomDefaulter answers only "patched" or an error: it cannot add an admission
// warning (the scrape annotations a Pod already sets, ScrapeAnnotationsWarning), nor
// tell skipped, unchanged and injected apart for leasehold_webhook_injections_total.
func (h *PodInjector) Handle(ctx context.Context, req admission.Request) admission.Response {
	log := logf.FromContext(ctx)

	// 1. Only CREATE: a Pod's containers and volumes cannot change afterwards.
	if req.Operation != admissionv1.Create {
		Injections.WithLabelValues(OutcomeSkipped).Inc()
		return admission.Allowed("leasehold injects only on CREATE")
	}

	// 2. Decode.
	pod := &corev1.Pod{}
	if err := h.decoder.Decode(req, pod); err != nil {
		Injections.WithLabelValues(OutcomeErrored).Inc()
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod: %w", err))
	}
	ns := req.Namespace
	if ns == "" {
		ns = pod.Namespace
	}

	// 3. Not ours. The MutatingWebhookConfiguration already filters; this is the
	// second line for a configuration edited by hand.
	if ns == "kube-system" || (h.Options.Namespace != "" && ns == h.Options.Namespace) {
		Injections.WithLabelValues(OutcomeSkipped).Inc()
		return admission.Allowed("leasehold never injects in namespace " + ns)
	}
	if pod.Annotations[AnnotationInject] == "false" {
		Injections.WithLabelValues(OutcomeSkipped).Inc()
		return admission.Allowed(AnnotationInject + " is \"false\"")
	}
	if !HasLeaseholdAnnotations(pod.Annotations) {
		Injections.WithLabelValues(OutcomeSkipped).Inc()
		return admission.Allowed("no leasehold.io annotations")
	}

	// 4. Parse; refuse with an actionable message.
	cfg, errs := ParseAnnotations(pod.Annotations)
	if len(errs) == 0 && !Wanted(pod.Annotations) {
		// Only leasehold.io/status: a copy of an injected Pod without lock
		// annotations. Nothing to do.
		Injections.WithLabelValues(OutcomeSkipped).Inc()
		return admission.Allowed("no lock annotations")
	}
	if len(errs) > 0 {
		Injections.WithLabelValues(OutcomeDenied).Inc()
		log.Info("Denied pod", "pod", podName(pod, req), "reason", errs.ToAggregate().Error())
		return denied(pod, req, errs)
	}

	// 5. Inject, purely, into a copy.
	injected := pod.DeepCopy()
	if errs := Inject(injected, cfg, h.Options); len(errs) > 0 {
		Injections.WithLabelValues(OutcomeDenied).Inc()
		log.Info("Denied pod", "pod", podName(pod, req), "reason", errs.ToAggregate().Error())
		return denied(pod, req, errs)
	}

	// 6. Patch against the raw request.
	marshalled, err := json.Marshal(injected)
	if err != nil {
		Injections.WithLabelValues(OutcomeErrored).Inc()
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("marshal injected pod: %w", err))
	}
	resp := admission.PatchResponseFromRaw(req.Object.Raw, marshalled)
	if resp, err = dropSchemeRemovals(resp, pod, req.Object.Raw); err != nil {
		Injections.WithLabelValues(OutcomeErrored).Inc()
		return admission.Errored(http.StatusInternalServerError, err)
	}
	if len(resp.Patches) == 0 {
		Injections.WithLabelValues(OutcomeUnchanged).Inc()
		return admission.Allowed("already injected")
	}
	if w := ScrapeAnnotationsWarning(pod, injected); w != "" {
		resp.Warnings = append(resp.Warnings, w)
	}
	Injections.WithLabelValues(OutcomeInjected).Inc()
	log.V(1).Info("Injected agent", "pod", podName(pod, req), "locks", cfg.Locks, "leader", cfg.Leader)
	return resp
}

// dropSchemeRemovals keeps fields this build's Pod type does not know (an API server
// newer than k8s.io/api) or drops when marshalling: the patch above diffs the raw
// request against the typed Pod, so it would remove them. As controller-runtime's
// defaulter does, the removals that a plain decode-and-marshal of the original already
// makes are taken out; the injector's own removals (a stale agent) stay.
func dropSchemeRemovals(resp admission.Response, original *corev1.Pod, raw []byte) (admission.Response, error) {
	if !slices.ContainsFunc(resp.Patches, func(o jsonpatch.JsonPatchOperation) bool { return o.Operation == "remove" }) {
		return resp, nil
	}
	marshalled, err := json.Marshal(original)
	if err != nil {
		return resp, fmt.Errorf("marshal original pod: %w", err)
	}
	roundTrip, err := jsonpatch.CreatePatch(raw, marshalled)
	if err != nil {
		return resp, fmt.Errorf("diff original pod: %w", err)
	}
	byScheme := map[string]bool{}
	for _, o := range roundTrip {
		if o.Operation == "remove" {
			byScheme[o.Path] = true
		}
	}
	resp.Patches = slices.DeleteFunc(resp.Patches, func(o jsonpatch.JsonPatchOperation) bool {
		return o.Operation == "remove" && byScheme[o.Path]
	})
	if len(resp.Patches) == 0 {
		resp.PatchType = nil
	}
	return resp, nil
}

func podName(pod *corev1.Pod, req admission.Request) string {
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	return req.Namespace + "/" + name
}

// denied answers with every problem, each naming the annotation or field, the value
// and the fix, as a 403 with reason Invalid-like details (what kubectl prints).
func denied(pod *corev1.Pod, req admission.Request, errs field.ErrorList) admission.Response {
	msgs := make([]string, 0, len(errs))
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	return admission.Denied(fmt.Sprintf("leasehold: pod %s: %s", podName(pod, req), strings.Join(msgs, "; ")))
}
