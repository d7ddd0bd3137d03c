package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/leasehold/leasehold/internal/testenv"
)

func readManifest(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "manifests", "base", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func yamlUnmarshal(b []byte, into any) error { return yaml.Unmarshal(b, into) }

// decodeManifests reads a multi-document YAML file from manifests/base into typed
// objects, failing on unknown fields.
func decodeManifests(t *testing.T, name string, into ...client.Object) {
	t.Helper()
	b := readManifest(t, name)
	docs := bytes.Split(b, []byte("\n---\n"))
	if len(docs) != len(into) {
		t.Fatalf("%s has %d documents, want %d", name, len(docs), len(into))
	}
	for i, d := range docs {
		if err := yaml.UnmarshalStrict(d, into[i]); err != nil {
			t.Fatalf("%s document %d: %v", name, i, err)
		}
	}
}

// TestCertRotatorOnAPIServer runs the self-managed TLS (cert-controller) as the
// webhook's ServiceAccount with exactly the RBAC of manifests/base/rbac.yaml, against a
// real API server holding the Secret and the MutatingWebhookConfiguration from
// manifests/base. A goroutine plays the kubelet, copying the Secret into the cert dir.
// It checks that the Secret gets a CA and a serving certificate for the Service's DNS
// name, that the caBundle is that CA, that a wiped caBundle is restored, and that the
// webhook server then serves with that certificate.
func TestCertRotatorOnAPIServer(t *testing.T) {
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	admin, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	ns, sa, secret := &corev1.Namespace{}, &corev1.ServiceAccount{}, &corev1.Secret{}
	role, rb, cr, crb := &rbacv1.Role{}, &rbacv1.RoleBinding{}, &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	decodeManifests(t, "namespace.yaml", ns)
	decodeManifests(t, "serviceaccount.yaml", sa)
	decodeManifests(t, "secret.yaml", secret)
	decodeManifests(t, "rbac.yaml", role, rb, cr, crb)
	decodeManifests(t, "mutatingwebhookconfiguration.yaml", mwc)
	for _, o := range []client.Object{ns, sa, secret, role, rb, cr, crb, mwc} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}

	// The webhook's identity: its ServiceAccount, no more.
	asWebhook := rest.CopyConfig(cfg)
	asWebhook.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:leasehold-system:leasehold-webhook"}

	certDir := t.TempDir()
	mgr, err := ctrl.NewManager(asWebhook, ctrl.Options{Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	ready, err := AddCertRotator(mgr, CertOptions{
		Namespace: "leasehold-system", SecretName: "leasehold-webhook-tls", ServiceName: "leasehold-webhook",
		WebhookConfigName: "leasehold-webhook", CertDir: certDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(ctx) }()

	// The kubelet's part: project the Secret into the cert dir.
	go func() {
		_ = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			s := &corev1.Secret{}
			if err := admin.Get(ctx, client.ObjectKeyFromObject(secret), s); err != nil || len(s.Data["tls.crt"]) == 0 {
				return false, nil
			}
			for k, v := range s.Data {
				_ = os.WriteFile(filepath.Join(certDir, k), v, 0o600)
			}
			return false, nil
		})
	}()

	select {
	case <-ready:
	case err := <-mgrDone:
		t.Fatalf("manager stopped: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("certificates not ready after 60s")
	}

	got := &corev1.Secret{}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(secret), got); err != nil {
		t.Fatal(err)
	}
	caPEM := got.Data["ca.crt"]
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("secret has no CA: keys %v", keys(got.Data))
	}
	block, _ := pem.Decode(got.Data["tls.crt"])
	if block == nil {
		t.Fatal("secret has no tls.crt")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"leasehold-webhook.leasehold-system.svc", "leasehold-webhook.leasehold-system.svc.cluster.local"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("serving certificate not valid for %s: %v", name, err)
		}
	}

	caBundle := func() []byte {
		m := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(mwc), m); err != nil {
			t.Fatal(err)
		}
		return m.Webhooks[0].ClientConfig.CABundle
	}
	if !bytes.Equal(caBundle(), caPEM) {
		t.Fatalf("caBundle is not the Secret's CA")
	}

	// Someone (a re-apply of the manifests) wipes the caBundle: it comes back.
	m := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(mwc), m); err != nil {
		t.Fatal(err)
	}
	m.Webhooks[0].ClientConfig.CABundle = nil
	if err := admin.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return bytes.Equal(caBundle(), caPEM), nil
	}); err != nil {
		t.Errorf("wiped caBundle was not restored: %v", err)
	}

	// What the webhook server loads from the cert dir is a usable key pair.
	if _, err := tls.LoadX509KeyPair(filepath.Join(certDir, "tls.crt"), filepath.Join(certDir, "tls.key")); err != nil {
		t.Errorf("projected key pair: %v", err)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
