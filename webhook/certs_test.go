package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/yaml"

	"github.com/leasehold/leasehold/internal/testing/testenv"
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

// certFixture is the self-managed TLS (cert-controller) running as the webhook's
// ServiceAccount, with exactly the RBAC of manifests/base/rbac.yaml, against a real API
// server holding the Secret and the MutatingWebhookConfiguration from manifests/base.
// A goroutine plays the kubelet, copying the Secret into the cert dir.
type certFixture struct {
	ctx     context.Context
	admin   client.Client
	secret  *corev1.Secret
	mwc     *admissionregistrationv1.MutatingWebhookConfiguration
	certDir string
	mgr     manager.Manager
	ready   <-chan struct{}
}

var rotatorSeq atomic.Int64

// startCertRotator starts the rotator with opts (names filled in) and waits until the
// certificates are mounted and the CA injected. before runs on the manager before it
// starts.
func startCertRotator(t *testing.T, opts CertOptions, before func(manager.Manager)) *certFixture {
	t.Helper()
	cfg := testenv.Start(t)
	admin, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Made before the context, so that its removal (cleanups run last-in first-out)
	// comes after the manager and the fake kubelet below have stopped writing to it.
	certDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	ns, sa, secret := &corev1.Namespace{}, &corev1.ServiceAccount{}, &corev1.Secret{}
	role, rb, cr, crb := &rbacv1.Role{}, &rbacv1.RoleBinding{}, &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	policy, binding := &admissionregistrationv1.ValidatingAdmissionPolicy{}, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	decodeManifests(t, "namespace.yaml", ns)
	decodeManifests(t, "serviceaccount.yaml", sa)
	decodeManifests(t, "secret.yaml", secret)
	decodeManifests(t, "rbac.yaml", role, rb, cr, crb)
	decodeManifests(t, "webhook-config-policy.yaml", policy, binding) // the rotator writes only the caBundle
	decodeManifests(t, "mutatingwebhookconfiguration.yaml", mwc)
	for _, o := range []client.Object{ns, sa, secret, role, rb, cr, crb, policy, binding, mwc} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}

	// The webhook's identity: its ServiceAccount, no more.
	asWebhook := rest.CopyConfig(cfg)
	asWebhook.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:leasehold-system:leasehold-webhook"}

	mgr, err := ctrl.NewManager(asWebhook, ctrl.Options{Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	opts.Namespace, opts.SecretName, opts.ServiceName = "leasehold-system", "leasehold-webhook-tls", "leasehold-webhook"
	opts.WebhookConfigName, opts.CertDir = "leasehold-webhook", certDir
	opts.ControllerName = fmt.Sprintf("cert-rotator-%d", rotatorSeq.Add(1)) // unique in this process, even with -count
	ready, err := AddCertRotator(mgr, opts)
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(mgr)
	}
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(ctx) }()

	// The kubelet's part: project the Secret into the cert dir, each changed file
	// replaced at once (the kubelet swaps a symlink; a rename does the same here).
	go func() {
		_ = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			s := &corev1.Secret{}
			if err := admin.Get(ctx, client.ObjectKeyFromObject(secret), s); err != nil || len(s.Data["tls.crt"]) == 0 {
				return false, nil
			}
			for k, v := range s.Data {
				if old, _ := os.ReadFile(filepath.Join(certDir, k)); !bytes.Equal(old, v) {
					tmp := filepath.Join(certDir, "."+k+".tmp")
					if os.WriteFile(tmp, v, 0o600) == nil {
						_ = os.Rename(tmp, filepath.Join(certDir, k))
					}
				}
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
	return &certFixture{ctx: ctx, admin: admin, secret: secret, mwc: mwc, certDir: certDir, mgr: mgr, ready: ready}
}

// TestCertRotatorOnAPIServer checks that the Secret gets a CA and a serving certificate
// for the Service's DNS name, that the caBundle is that CA, that a wiped caBundle is
// restored, and that what lands in the cert dir is a usable key pair.
func TestCertRotatorOnAPIServer(t *testing.T) {
	f := startCertRotator(t, CertOptions{}, nil)
	ctx, admin, secret, mwc, certDir := f.ctx, f.admin, f.secret, f.mwc, f.certDir

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

// The serving certificate is replaced before it expires, signed by the same CA (so the
// API server, which trusts the caBundle, never sees a certificate it cannot verify),
// and the running webhook server picks the new one up without a restart. The
// certificates here live two minutes and are renewed when less than 117 s are left,
// i.e. about 3 s after they are made.
func TestServingCertificateIsRenewedBeforeItExpires(t *testing.T) {
	f := startCertRotator(t, CertOptions{ServerCertValidity: 2 * time.Minute, RenewBefore: 117 * time.Second,
		CAValidity: time.Hour, CheckEvery: time.Second}, nil)
	ctx := f.ctx
	secretNow := func() *corev1.Secret {
		s := &corev1.Secret{}
		if err := f.admin.Get(ctx, client.ObjectKeyFromObject(f.secret), s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := secretNow()
	firstLeaf := parseCert(t, first.Data["tls.crt"])

	// The webhook server, as cmd/leasehold-webhook runs it: from the cert dir.
	port := testenv.FreePort(t)
	srv := crwebhook.NewServer(crwebhook.Options{Host: "127.0.0.1", Port: port, CertDir: f.certDir})
	srv.Register("/ok", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	if err := f.mgr.Add(srv); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(first.Data["ca.crt"])
	served := func() (*x509.Certificate, error) {
		c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{RootCAs: pool,
			ServerName: "leasehold-webhook.leasehold-system.svc"})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0], nil
	}

	var renewed *corev1.Secret
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		renewed = secretNow()
		return !parseCert(t, renewed.Data["tls.crt"]).Equal(firstLeaf), nil
	}); err != nil {
		t.Fatalf("serving certificate (valid until %s) not renewed within 30s", firstLeaf.NotAfter)
	}
	if !bytes.Equal(renewed.Data["ca.crt"], first.Data["ca.crt"]) {
		t.Fatal("renewing the serving certificate replaced the CA")
	}
	m := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := f.admin.Get(ctx, client.ObjectKeyFromObject(f.mwc), m); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Webhooks[0].ClientConfig.CABundle, first.Data["ca.crt"]) {
		t.Fatal("caBundle changed with the serving certificate")
	}

	// The server presents a renewed certificate (there may be several renewals by now),
	// valid for the Service's name under the unchanged CA.
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		leaf, err := served()
		if err != nil {
			last = err
			return false, nil
		}
		return !leaf.Equal(firstLeaf) && leaf.NotAfter.After(firstLeaf.NotAfter), nil
	}); err != nil {
		t.Fatalf("the webhook server still serves the first certificate (or fails: %v)", last)
	}
}

func parseCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
