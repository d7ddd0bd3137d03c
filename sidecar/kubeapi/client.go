package kubeapi

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
	params = runtime.NewParameterCodec(scheme)
)

func init() {
	if err := coordinationv1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
}

// Client talks to the API server for one namespace.
type Client struct {
	rc        *rest.RESTClient
	namespace string
}

// New returns a client of the namespace's Leases (and Events, access reviews).
func New(cfg *rest.Config, namespace string) (*Client, error) {
	c := rest.CopyConfig(cfg)
	c.APIPath = "/apis"
	c.GroupVersion = &coordinationv1.SchemeGroupVersion
	c.NegotiatedSerializer = codecs.WithoutConversion()
	c.ContentType = runtime.ContentTypeJSON
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("create REST client: %w", err)
	}
	return &Client{rc: rc, namespace: namespace}, nil
}

// List lists the namespace's Leases.
func (c *Client) List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	out := &coordinationv1.LeaseList{}
	err := c.rc.Get().Namespace(c.namespace).Resource("leases").VersionedParams(&opts, params).Do(ctx).Into(out)
	return out, err
}

// Watch watches the namespace's Leases.
func (c *Client) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	r := c.rc.Get().Namespace(c.namespace).Resource("leases").VersionedParams(&opts, params)
	if opts.TimeoutSeconds != nil {
		r = r.Timeout(time.Duration(*opts.TimeoutSeconds) * time.Second)
	}
	return r.Watch(ctx)
}

// Create creates a Lease.
func (c *Client) Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.rc.Post().Namespace(c.namespace).Resource("leases").VersionedParams(&opts, params).Body(lease).Do(ctx).Into(out)
	return out, err
}

// Update replaces a Lease, conditional on its resourceVersion.
func (c *Client) Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.rc.Put().Namespace(c.namespace).Resource("leases").Name(lease.Name).VersionedParams(&opts, params).Body(lease).Do(ctx).Into(out)
	return out, err
}

// LeaseAccess is one request an agent makes on the Leases of its namespace: Verb on the
// Lease Name, or on any Lease when Name is empty (create: RBAC cannot narrow create by
// name, since the name is in the body).
type LeaseAccess struct {
	Verb, Name string
}

func (a LeaseAccess) String() string {
	if a.Name == "" {
		return a.Verb + " leases"
	}
	return a.Verb + " lease " + a.Name
}

// DeniedLeaseAccess asks the API server which of access it denies to the agent. One
// SelfSubjectRulesReview of the namespace lists the rules that allow the agent anything
// there; what they cover is allowed. What they do not cover, or everything when the
// server says the list is incomplete (an authorizer other than RBAC) or will not review
// rules, is asked with one SelfSubjectAccessReview per request, which is authoritative.
// A Role that grants rights on Leases by resourceNames allows a request for one of those
// names only, so each is asked with its name. With the usual RBAC this is one request at
// start instead of one per verb and lock (7 for two locks): a cluster's agents starting
// at once made more access reviews than Lease requests (BENCHMARKS.md, Scale).
//
// A rules review that fails for a reason that may pass (a timeout, a 5xx, a 429, no
// connection) is an error, for the caller to ask again later: answering it with an
// access review per request multiplied the load on an API server that was already too
// busy to answer (1.7 access reviews per agent when 1,000 started at once). Only a
// server that will not answer rules reviews (403, 404, 405, 400) gets access reviews.
func (c *Client) DeniedLeaseAccess(ctx context.Context, access ...LeaseAccess) (denied []LeaseAccess, err error) {
	rules, complete, err := c.leaseRules(ctx)
	if err != nil {
		return nil, fmt.Errorf("review the rules of leases: %w", err)
	}
	var ask []LeaseAccess
	for _, a := range access {
		if !complete || !rulesAllow(rules, a) {
			ask = append(ask, a)
		}
	}
	return c.reviewEach(ctx, ask)
}

// resourceRule is a rule of a SelfSubjectRulesReview's status (authorization.k8s.io/v1
// ResourceRule; the agent links no RBAC or authorization types, to stay small).
type resourceRule struct {
	Verbs         []string `json:"verbs"`
	APIGroups     []string `json:"apiGroups"`
	Resources     []string `json:"resources"`
	ResourceNames []string `json:"resourceNames"`
}

// leaseRules returns the agent's rules in the namespace, and whether the API server
// says they are complete; incomplete also when the server will not review rules. The
// error is a failure that may pass.
func (c *Client) leaseRules(ctx context.Context) ([]resourceRule, bool, error) {
	body, _ := json.Marshal(map[string]any{
		"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
		"spec": map[string]any{"namespace": c.namespace},
	})
	raw, err := c.rc.Post().AbsPath("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews").Body(body).DoRaw(ctx)
	switch {
	case apierrors.IsForbidden(err) || apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) || apierrors.IsBadRequest(err):
		return nil, false, nil
	case err != nil:
		return nil, false, err
	}
	var r struct {
		Status struct {
			ResourceRules   []resourceRule `json:"resourceRules"`
			Incomplete      bool           `json:"incomplete"`
			EvaluationError string         `json:"evaluationError"`
		} `json:"status"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, false, nil
	}
	return r.Status.ResourceRules, !r.Status.Incomplete && r.Status.EvaluationError == "", nil
}

// rulesAllow says whether one of rules allows a on the Leases of the namespace, as RBAC
// matches a rule: the verb, the group and the resource listed or "*", and the name
// listed when the rule names any (a request without a name, create, matches only a
// rule that names none). Hand-written rather than component-helpers' rule comparator,
// which would link k8s.io/api/rbac/v1 into every Pod's agent for these few lines.
func rulesAllow(rules []resourceRule, a LeaseAccess) bool {
	for _, r := range rules {
		if anyOf(r.Verbs, a.Verb) && anyOf(r.APIGroups, "coordination.k8s.io") && anyOf(r.Resources, "leases") &&
			(len(r.ResourceNames) == 0 || a.Name != "" && slices.Contains(r.ResourceNames, a.Name)) {
			return true
		}
	}
	return false
}

func anyOf(set []string, v string) bool { return slices.Contains(set, v) || slices.Contains(set, "*") }

// reviewEach asks one SelfSubjectAccessReview per request and returns those denied.
func (c *Client) reviewEach(ctx context.Context, access []LeaseAccess) (denied []LeaseAccess, err error) {
	for _, a := range access {
		attrs := map[string]string{
			"namespace": c.namespace, "verb": a.Verb, "group": "coordination.k8s.io", "resource": "leases",
		}
		if a.Name != "" {
			attrs["name"] = a.Name
		}
		body, _ := json.Marshal(map[string]any{
			"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
			"spec": map[string]any{"resourceAttributes": attrs},
		})
		raw, err := c.rc.Post().AbsPath("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").Body(body).DoRaw(ctx)
		if err != nil {
			return nil, fmt.Errorf("review access to leases: %w", err)
		}
		var r struct {
			Status struct {
				Allowed bool `json:"allowed"`
			} `json:"status"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("decode access review: %w", err)
		}
		if !r.Status.Allowed {
			denied = append(denied, a)
		}
	}
	return denied, nil
}

// Event limits: a burst, then one per refill period.
const (
	EventBurst  = 25
	EventRefill = 10 * time.Second
)

// PodEvent is one Event to record on the Pod.
type PodEvent struct {
	Type, Reason, Message string
}

// EventRecorder posts Events on one Pod, asynchronously and rate limited.
type EventRecorder struct {
	c                   *Client
	pod, uid, component string
	log                 logr.Logger
	queue               chan PodEvent
	mu                  sync.Mutex
	tokens              float64
	last                time.Time
}

// NewEventRecorder returns a recorder for the Pod; Run posts the queued Events.
func (c *Client) NewEventRecorder(pod, uid, component string, log logr.Logger) *EventRecorder {
	return &EventRecorder{c: c, pod: pod, uid: uid, component: component, log: log,
		queue: make(chan PodEvent, 32), tokens: EventBurst, last: time.Now()}
}

// Record queues an Event; it never blocks. Normal Events spend the rate limit's tokens;
// Warnings (a lost lock) do not, so a busy lock's acquired/released chatter can never
// crowd out the Event an operator needs. Either is dropped when the queue is full.
func (r *EventRecorder) Record(ev PodEvent) {
	if ev.Type == "Warning" {
		r.enqueue(ev)
		return
	}
	r.mu.Lock()
	now := time.Now()
	r.tokens = min(EventBurst, r.tokens+now.Sub(r.last).Seconds()/EventRefill.Seconds())
	r.last = now
	ok := r.tokens >= 1
	if ok {
		r.tokens--
	}
	r.mu.Unlock()
	if ok {
		r.enqueue(ev)
	}
}

func (r *EventRecorder) enqueue(ev PodEvent) {
	select {
	case r.queue <- ev:
	default:
	}
}

// DrainTimeout bounds how long Run keeps posting the queued Events after its context
// ends (the Events of the holds released at shutdown).
const DrainTimeout = 3 * time.Second

// Run posts queued Events until ctx ends, then posts what is still queued: the agent
// queues the LockReleased Events of its shutdown release just before it ends ctx. Posts
// outlive ctx by at most DrainTimeout.
func (r *EventRecorder) Run(ctx context.Context) {
	postCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(DrainTimeout, cancel) })
	defer stop()
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case ev := <-r.queue:
					r.post(postCtx, ev)
				default:
					return
				}
			}
		case ev := <-r.queue:
			r.post(postCtx, ev)
		}
	}
}

// post posts ev. A Warning (a lock lost, or in jeopardy) that the API server did not
// take is tried again, with a growing pause up to EventRetryMax, for up to
// EventRetryFor: a jeopardy comes from the API server being unavailable, and its Event is
// written when the API server takes writes again.
func (r *EventRecorder) post(ctx context.Context, ev PodEvent) {
	pause := time.Second
	for start := time.Now(); ; pause = min(2*pause, EventRetryMax) {
		err := r.postOnce(ctx, ev)
		if err == nil || ev.Type != "Warning" || time.Since(start) > EventRetryFor || apierrors.IsForbidden(err) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}

// EventRetryMax and EventRetryFor bound the retries of a Warning Event.
const (
	EventRetryMax = 10 * time.Second
	EventRetryFor = 10 * time.Minute
)

func (r *EventRecorder) postOnce(ctx context.Context, ev PodEvent) error {
	now := time.Now().UTC().Format(time.RFC3339)
	body, _ := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Event",
		"metadata":       map[string]string{"name": fmt.Sprintf("%s.%x", r.pod, time.Now().UnixNano()), "namespace": r.c.namespace},
		"involvedObject": map[string]string{"kind": "Pod", "apiVersion": "v1", "namespace": r.c.namespace, "name": r.pod, "uid": r.uid},
		"reason":         ev.Reason, "message": ev.Message, "type": ev.Type,
		"source":         map[string]string{"component": r.component},
		"firstTimestamp": now, "lastTimestamp": now, "count": 1,
		"reportingComponent": r.component, "reportingInstance": r.pod,
	})
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := r.c.rc.Post().AbsPath("/api/v1/namespaces", r.c.namespace, "events").Body(body).DoRaw(pctx)
	if err != nil {
		r.log.V(1).Info("Failed to record event", "reason", ev.Reason, "err", err.Error())
	}
	return err
}
