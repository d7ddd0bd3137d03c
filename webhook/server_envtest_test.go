package webhook

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

func annotatedPod(ns, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{AnnotationLocks: "db"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
	}
}

// createInjected creates n annotated Pods through the API server, a few at a time, and
// returns what went wrong: a create that failed (the API server gives up on the webhook
// after its timeoutSeconds, and failurePolicy Fail fails the create) or a Pod stored
// without its agent.
func createInjected(ctx context.Context, c client.Client, ns, prefix string, n int) []string {
	var (
		mu       sync.Mutex
		failures []string
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, 4)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			p := annotatedPod(ns, fmt.Sprintf("%s-%d", prefix, i))
			start := time.Now()
			err := c.Create(ctx, p)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				failures = append(failures, fmt.Sprintf("%s: create failed after %s: %v", p.Name, time.Since(start).Round(time.Millisecond), err))
			case len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != AgentContainerName:
				failures = append(failures, fmt.Sprintf("%s: stored without the agent", p.Name))
			}
		})
	}
	wg.Wait()
	return failures
}

// TestSlowClientsDoNotStopPodCreatesOnAPIServer: the finding "one slow connection
// stops every annotated Pod create", with the real kube-apiserver calling the webhook
// (failurePolicy Fail, timeoutSeconds 5 from manifests/base): while 300 connections
// from other addresses announce 4 MiB reviews and trickle them and 300 more send half
// a TLS ClientHello, every one of 40 annotated Pods is created, injected.
func TestSlowClientsDoNotStopPodCreatesOnAPIServer(t *testing.T) {
	c, addr, _, _ := startDefendedWebhookEnv(t, DefaultReviewLimits(), DefaultServerOptions(), nil, nil)
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}); err != nil {
		t.Fatal(err)
	}
	attackCtx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	opened := attack(attackCtx, t, addr, attackers(10), 30, 30)
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return opened.Load() >= 600, nil
	}); err != nil {
		t.Fatalf("the attack opened %d connections, want 600", opened.Load())
	}
	// Bounded: without the defences, the client's retries of 429s would take minutes.
	createCtx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	failures := createInjected(createCtx, c, "team-a", "during-attack", 40)
	stop()
	t.Logf("attack connections opened: %d", opened.Load())
	if len(failures) > 0 {
		t.Errorf("%d of 40 annotated Pod creates failed during the attack; first ones:\n%s", len(failures), joinFirst(failures, 5))
	}
}

// TestAPIServerPresentsClientCertificate: with --client-ca-file, the real kube-apiserver,
// given an admission configuration whose kubeconfig names a client certificate for the
// webhook (as the README shows), is let in and its annotated Pods are injected; a
// client without a certificate gets no review handled.
func TestAPIServerPresentsClientCertificate(t *testing.T) {
	dir := t.TempDir()
	clientCA := newTestCA(t, "leasehold-admission-client-ca")
	caFile := filepath.Join(dir, "client-ca.crt")
	if err := os.WriteFile(caFile, clientCA.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	_, certPEM, keyPEM := clientCA.issue(t, "kube-apiserver", true)
	// The API server picks the kubeconfig user named after the webhook it calls: here
	// the URL envtest writes (host:port); in a cluster, the Service:
	// leasehold-webhook.leasehold-system.svc (README).
	port := freePort(t)
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
users:
- name: "127.0.0.1:%d"
  user:
    client-certificate-data: %s
    client-key-data: %s
`, port, base64.StdEncoding.EncodeToString(certPEM), base64.StdEncoding.EncodeToString(keyPEM))
	kubeconfigFile := filepath.Join(dir, "admission-kubeconfig.yaml")
	admissionFile := filepath.Join(dir, "admission-configuration.yaml")
	admission := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: %s
`, kubeconfigFile)
	for f, content := range map[string]string{kubeconfigFile: kubeconfig, admissionFile: admission} {
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	defence := DefaultServerOptions()
	defence.ClientCAFile = caFile
	c, addr, _, _ := startDefendedWebhookEnv(t, DefaultReviewLimits(), defence, func(env *envtest.Environment) {
		env.WebhookInstallOptions.LocalServingHost, env.WebhookInstallOptions.LocalServingPort = "127.0.0.1", port
		env.ControlPlane.GetAPIServer().Configure().Set("admission-control-config-file", admissionFile)
	}, nil)
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}); err != nil {
		t.Fatal(err)
	}
	if failures := createInjected(ctx, c, "team-a", "authenticated", 3); len(failures) > 0 {
		t.Fatalf("annotated Pod creates with the API server presenting its client certificate:\n%s", joinFirst(failures, 3))
	}

	before := reviews()
	anyone := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // whoever it is
	resp, _, err := admit(ctx, anyone, addr, annotatedReview(t, "pod-1"), webhookTimeout(t))
	if err == nil {
		t.Errorf("a client without a certificate got an answer: %+v", resp)
	}
	if n := reviews() - before; n != 0 {
		t.Errorf("the injector handled %v reviews from a client without a certificate", n)
	}
}
