package webhook

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// webhookManifest is the MutatingWebhookConfiguration users apply (manifests/base).
var webhookManifest = filepath.Join("..", "manifests", "base", "mutatingwebhookconfiguration.yaml")

// reviews is the number of admission reviews the injector has handled.
func reviews() float64 {
	var n float64
	for _, o := range []string{OutcomeInjected, OutcomeUnchanged, OutcomeSkipped, OutcomeDenied, OutcomeErrored} {
		n += testutil.ToFloat64(Injections.WithLabelValues(o))
	}
	return n
}

// startWebhookEnv starts envtest with the webhook configuration from manifests/base and
// the injector behind controller-runtime's TLS webhook server. configure may change
// the API server's flags before it starts.
func startWebhookEnv(t *testing.T, configure func(*envtest.Environment), extra map[string]http.Handler) (client.Client, context.CancelFunc, <-chan error) {
	t.Helper()
	return startWebhookEnvWith(t, DefaultReviewLimits(), configure, extra)
}

// startWebhookEnvWith is startWebhookEnv with the injector behind Guard(limits), as
// cmd/leasehold-webhook serves it.
func startWebhookEnvWith(t *testing.T, limits ReviewLimits, configure func(*envtest.Environment), extra map[string]http.Handler) (client.Client, context.CancelFunc, <-chan error) {
	t.Helper()
	c, _, stop, done := startDefendedWebhookEnv(t, limits, DefaultServerOptions(), configure, extra)
	return c, stop, done
}

// startDefendedWebhookEnv is startWebhookEnvWith with the server's defences set; it
// also returns the webhook server's address.
func startDefendedWebhookEnv(t *testing.T, limits ReviewLimits, defence ServerOptions, configure func(*envtest.Environment),
	extra map[string]http.Handler) (client.Client, string, context.CancelFunc, <-chan error) {
	t.Helper()
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	env.WebhookInstallOptions = envtest.WebhookInstallOptions{Paths: []string{webhookManifest}}
	if configure != nil {
		configure(env)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop envtest: %v", err)
		}
	})
	if !slices.ContainsFunc(env.WebhookInstallOptions.MutatingWebhooks, func(m *admissionregistrationv1.MutatingWebhookConfiguration) bool {
		return m.Name == "leasehold-webhook"
	}) {
		t.Fatalf("did not load the leasehold-webhook MutatingWebhookConfiguration from %s", webhookManifest)
	}

	wo := env.WebhookInstallOptions
	server := NewServer(crwebhook.Options{Host: wo.LocalServingHost, Port: wo.LocalServingPort, CertDir: wo.LocalServingCertDir,
		TLSOpts: []func(*tls.Config){SecureTLS}}, defence) // as cmd/leasehold-webhook: the API server must get along with it
	server.Register(Path, Instrument(Guard(&admission.Webhook{Handler: NewPodInjector(DefaultOptions())}, limits)))
	for path, h := range extra {
		server.Register(path, h)
	}
	serverCtx, stopServer := context.WithCancel(context.Background())
	serverDone := make(chan error, 1)
	go func() { serverDone <- server.Start(serverCtx) }()
	t.Cleanup(stopServer)
	started := server.StartedChecker()
	if err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 20*time.Second, true,
		func(context.Context) (bool, error) { return started(&http.Request{}) == nil, nil }); err != nil {
		t.Fatalf("webhook server did not start: %v", err)
	}

	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c, net.JoinHostPort(wo.LocalServingHost, strconv.Itoa(wo.LocalServingPort)), stopServer, serverDone
}

// TestAdmissionOnAPIServer runs the injector behind controller-runtime's TLS webhook
// server and registers it with a real kube-apiserver using the
// MutatingWebhookConfiguration from manifests/base (envtest only rewrites its
// clientConfig to the local server and its CA).
func TestAdmissionOnAPIServer(t *testing.T) {
	c, stopServer, serverDone := startWebhookEnv(t, nil, nil)
	ctx := context.Background()
	for _, ns := range []string{"team-a", "leasehold-system"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatalf("create namespace %s: %v", ns, err)
		}
	}

	pod := func(ns, name string, annotations map[string]string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
		}
	}
	get := func(t *testing.T, p *corev1.Pod) *corev1.Pod {
		t.Helper()
		got := &corev1.Pod{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(p), got); err != nil {
			t.Fatal(err)
		}
		return got
	}

	t.Run("annotated pod is stored injected", func(t *testing.T) {
		in := pod("team-a", "injected", map[string]string{AnnotationLocks: "db-migration", AnnotationLeader: "leader"})
		before := testutil.ToFloat64(Injections.WithLabelValues(OutcomeInjected))
		if err := c.Create(ctx, in.DeepCopy()); err != nil {
			t.Fatalf("create: %v", err)
		}
		if n := testutil.ToFloat64(Injections.WithLabelValues(OutcomeInjected)) - before; n != 1 {
			t.Errorf("injected counter moved by %v, want 1", n)
		}
		got := get(t, in)

		// What the pure injector computes, from what the API server stored.
		cfg, errs := ParseAnnotations(in.Annotations)
		if len(errs) > 0 {
			t.Fatal(errs.ToAggregate())
		}
		want := in.DeepCopy()
		if errs := Inject(want, cfg, DefaultOptions()); len(errs) > 0 {
			t.Fatal(errs.ToAggregate())
		}
		if len(got.Spec.InitContainers) != 1 {
			t.Fatalf("stored init containers: %+v", got.Spec.InitContainers)
		}
		if diff := cmp.Diff(want.Spec.InitContainers[0], got.Spec.InitContainers[0]); diff != "" {
			t.Errorf("stored agent differs from the injector's (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(want.Spec.Volumes, got.Spec.Volumes); diff != "" {
			t.Errorf("volumes (-want +got):\n%s", diff)
		}
		app := got.Spec.Containers[0]
		if !hasMount(app) || envValue(app, EnvSocket) != SocketPath {
			t.Errorf("app container lacks mount or env: %+v", app)
		}
		if diff := cmp.Diff([]int64{AgentUID}, got.Spec.SecurityContext.SupplementalGroups); diff != "" {
			t.Errorf("supplementalGroups (-want +got):\n%s", diff)
		}
		if got.Annotations[AnnotationStatus] != StatusInjected {
			t.Errorf("status annotation %q", got.Annotations[AnnotationStatus])
		}

		// Re-submitting the stored Pod (as `kubectl get -o yaml | kubectl create -f -`
		// does) yields no second agent.
		again := got.DeepCopy()
		again.ObjectMeta = metav1.ObjectMeta{Namespace: "team-a", Name: "resubmitted", Annotations: got.Annotations}
		again.Spec.NodeName = ""
		if err := c.Create(ctx, again); err != nil {
			t.Fatalf("re-submit: %v", err)
		}
		re := get(t, again)
		if diff := cmp.Diff(got.Spec.InitContainers, re.Spec.InitContainers); diff != "" {
			t.Errorf("re-submission changed the init containers (-first +again):\n%s", diff)
		}
		if diff := cmp.Diff(got.Spec.Containers, re.Spec.Containers); diff != "" {
			t.Errorf("re-submission changed the containers (-first +again):\n%s", diff)
		}
		if diff := cmp.Diff(got.Spec.Volumes, re.Spec.Volumes); diff != "" {
			t.Errorf("re-submission changed the volumes (-first +again):\n%s", diff)
		}
	})

	t.Run("bad annotation is refused with the message", func(t *testing.T) {
		err := c.Create(ctx, pod("team-a", "bad", map[string]string{AnnotationLocks: "DB_Lock", AnnotationRenewDeadline: "20s"}))
		if err == nil {
			t.Fatal("a pod with a bad lock name was admitted")
		}
		if !apierrors.IsForbidden(err) {
			t.Errorf("want 403 Forbidden, got %v", err)
		}
		for _, w := range []string{
			`denied the request`,
			`metadata.annotations[leasehold.io/locks]: Invalid value: "DB_Lock"`,
			`fix: use lowercase letters`,
			`metadata.annotations[leasehold.io/renew-deadline]: Invalid value: "20s"`,
		} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q\nlacks %q", err, w)
			}
		}
	})

	t.Run("typo of the lock annotation is refused", func(t *testing.T) {
		err := c.Create(ctx, pod("team-a", "typo", map[string]string{"leasehold.io/lock": "db"}))
		if err == nil || !strings.Contains(err.Error(), `did you mean "leasehold.io/locks"?`) {
			t.Errorf("want a denial suggesting leasehold.io/locks, got %v", err)
		}
	})

	// untouched creates a Pod and checks that it is stored as sent and that the
	// webhook was not even called (the injections counter, summed over outcomes,
	// did not move): namespaceSelector and matchConditions did their job.
	untouched := func(t *testing.T, in *corev1.Pod) {
		t.Helper()
		before := reviews()
		if err := c.Create(ctx, in.DeepCopy()); err != nil {
			t.Fatalf("create: %v", err)
		}
		got := get(t, in)
		if len(got.Spec.InitContainers) != 0 || len(got.Spec.Volumes) != 0 || len(got.Spec.Containers[0].Env) != 0 {
			t.Errorf("pod was changed: %+v", got.Spec)
		}
		if _, ok := got.Annotations[AnnotationStatus]; ok {
			t.Errorf("pod got %s", AnnotationStatus)
		}
		if n := reviews() - before; n != 0 {
			t.Errorf("the webhook was called %v times", n)
		}
	}
	t.Run("pod without annotations is untouched", func(t *testing.T) {
		untouched(t, pod("team-a", "plain", nil))
	})
	t.Run("opted-out pod is untouched", func(t *testing.T) {
		untouched(t, pod("team-a", "opted-out", map[string]string{AnnotationLocks: "a", AnnotationInject: "false"}))
	})
	t.Run("kube-system is untouched", func(t *testing.T) {
		// Even a bad annotation: the webhook is not called there at all.
		untouched(t, pod("kube-system", "system", map[string]string{AnnotationLocks: "BAD_NAME"}))
	})
	t.Run("own namespace is untouched", func(t *testing.T) {
		untouched(t, pod("leasehold-system", "own", map[string]string{AnnotationLocks: "a"}))
	})

	// Last: stop the webhook. failurePolicy Fail: an annotated Pod is not admitted;
	// matchConditions: a Pod without leasehold.io/ annotations still is.
	t.Run("webhook down", func(t *testing.T) {
		stopServer()
		select {
		case err := <-serverDone:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Logf("webhook server stopped: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("webhook server did not stop")
		}
		err := c.Create(ctx, pod("team-a", "while-down", map[string]string{AnnotationLocks: "db"}))
		if err == nil {
			t.Fatal("an annotated pod was admitted while the webhook was down")
		}
		if !strings.Contains(err.Error(), `failed calling webhook "inject.leasehold.io"`) {
			t.Errorf("want the webhook-call error, got %v", err)
		}
		untouched(t, pod("team-a", "plain-while-down", nil))
	})
}

// TestAgentGetsServiceAccountToken runs the API server with its ServiceAccount
// admission plugin on (envtest turns it off by default), as in a real cluster: that
// built-in plugin runs before the webhooks, so the agent container, added by the
// webhook, must still end up with the ServiceAccount token it needs to reach the API.
func TestAgentGetsServiceAccountToken(t *testing.T) {
	c, _, _ := startWebhookEnv(t, func(env *envtest.Environment) {
		env.ControlPlane.GetAPIServer().Configure().Disable("disable-admission-plugins")
	}, nil)
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	tests := map[string]*bool{"automount default": nil, "automount off for the app": ptr.To(false)}
	i := 0
	for name, automount := range tests {
		t.Run(name, func(t *testing.T) {
			i++
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: fmt.Sprintf("sa%d", i),
					Annotations: map[string]string{AnnotationLocks: "db"}},
				Spec: corev1.PodSpec{AutomountServiceAccountToken: automount,
					Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
			}
			if err := c.Create(ctx, p); err != nil {
				t.Fatal(err)
			}
			if len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != AgentContainerName {
				t.Fatalf("not injected: %+v", p.Spec.InitContainers)
			}
			var mounts []string
			for _, m := range p.Spec.InitContainers[0].VolumeMounts {
				mounts = append(mounts, m.MountPath)
			}
			if n := len(slices.DeleteFunc(mounts, func(m string) bool { return m != ServiceAccountTokenDir })); n != 1 {
				t.Errorf("agent has %d mounts at %s, want 1: %+v", n, ServiceAccountTokenDir, p.Spec.InitContainers[0].VolumeMounts)
			}
		})
	}
}

// TestReinvocationOnAPIServer: a second mutating webhook, called after Leasehold's
// (webhook configurations run in name order), adds a container. The API server
// reinvokes Leasehold's webhook (reinvocationPolicy: IfNeeded), which gives that
// container the socket mount and environment and adds no second agent.
func TestReinvocationOnAPIServer(t *testing.T) {
	const addPath = "/add-container"
	addContainer := &admission.Webhook{Handler: admission.HandlerFunc(func(_ context.Context, req admission.Request) admission.Response {
		pod := &corev1.Pod{}
		if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
			return admission.Errored(http.StatusBadRequest, err)
		}
		if slices.ContainsFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == "mesh-proxy" }) {
			return admission.Allowed("")
		}
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "mesh-proxy", Image: "example.com/proxy:1"})
		b, _ := json.Marshal(pod)
		return admission.PatchResponseFromRaw(req.Object.Raw, b)
	})}
	c, _, _ := startWebhookEnv(t, func(env *envtest.Environment) {
		other := &admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "zz-mesh"},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{
				Name:                    "mesh.example.com",
				AdmissionReviewVersions: []string{"v1"},
				ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
					Namespace: "default", Name: "mesh", Path: ptr.To(addPath)}},
				Rules: []admissionregistrationv1.RuleWithOperations{{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}},
				SideEffects: ptr.To(admissionregistrationv1.SideEffectClassNone),
			}},
		}
		env.WebhookInstallOptions.MutatingWebhooks = append(env.WebhookInstallOptions.MutatingWebhooks, other)
	}, map[string]http.Handler{addPath: addContainer})
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}); err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(Injections.WithLabelValues(OutcomeInjected))
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "reinvoked", Annotations: map[string]string{AnnotationLocks: "db"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
	}
	if err := c.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ct := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		names = append(names, ct.Name)
		if !hasMount(ct) {
			t.Errorf("container %q has no socket mount", ct.Name)
		}
		if ct.Name != AgentContainerName && envValue(ct, EnvSocket) != SocketPath {
			t.Errorf("container %q has no %s", ct.Name, EnvSocket)
		}
	}
	if diff := cmp.Diff([]string{AgentContainerName, "app", "mesh-proxy"}, names); diff != "" {
		t.Errorf("containers (-want +got):\n%s", diff)
	}
	// Called twice, both times with a patch: the injection, then the mesh-proxy mount.
	if n := testutil.ToFloat64(Injections.WithLabelValues(OutcomeInjected)) - before; n != 2 {
		t.Errorf("injector patched %v times, want 2 (first call and the reinvocation)", n)
	}
}

// TestOversizedPodOnAPIServer: a Pod whose review is over --max-review-bytes (lowered
// here to 256 KiB, so that the API server, whose own limit is 3 MiB, lets it through)
// is refused with the webhook's message, as the user sees it; an ordinary Pod is
// injected as before.
func TestOversizedPodOnAPIServer(t *testing.T) {
	limits := ReviewLimits{MaxReviewBytes: 256 << 10, MaxInFlightBytes: 256 << 10, QueueTimeout: time.Second}
	c, _, _ := startWebhookEnvWith(t, limits, nil, nil)
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}); err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(Refusals.WithLabelValues(RefusedTooLarge))
	big := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "big", Annotations: map[string]string{AnnotationLocks: "db"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
	}
	for i := range 1500 {
		big.Spec.Containers[0].Env = append(big.Spec.Containers[0].Env, corev1.EnvVar{Name: fmt.Sprintf("CONFIG_%d", i), Value: strings.Repeat("v", 200)})
	}
	err := c.Create(ctx, big)
	if err == nil {
		t.Fatal("a pod over --max-review-bytes was admitted")
	}
	if !apierrors.IsRequestEntityTooLargeError(err) {
		t.Errorf("want 413, got %v", err)
	}
	for _, w := range []string{`admission webhook "inject.leasehold.io" denied the request: leasehold: the admission review of pod team-a/big is`,
		"MiB, more than --max-review-bytes=256Ki", "fix: make the Pod smaller"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q\nlacks %q", err, w)
		}
	}
	if n := testutil.ToFloat64(Refusals.WithLabelValues(RefusedTooLarge)) - before; n != 1 {
		t.Errorf("too-large refusals counted %v, want 1", n)
	}

	small := big.DeepCopy()
	small.Name, small.Spec.Containers[0].Env = "small", nil
	if err := c.Create(ctx, small); err != nil {
		t.Fatal(err)
	}
	if len(small.Spec.InitContainers) != 1 || small.Spec.InitContainers[0].Name != AgentContainerName {
		t.Errorf("an ordinary pod was not injected: %+v", small.Spec.InitContainers)
	}
}
