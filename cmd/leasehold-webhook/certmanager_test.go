package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// caAndLeaf returns a CA and a serving certificate for dnsName that it signed, in PEM,
// as cert-manager's CA Issuer writes them (ca.crt, tls.crt, tls.key).
func caAndLeaf(t *testing.T, dnsName string) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "leasehold-webhook-ca"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kDER, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kDER})
}

// TestRunCertManagerFromSecret runs the webhook as manifests/overlays/cert-manager
// does (--self-signed-certs=false --cert-from-secret), as its ServiceAccount with the
// overlay's RBAC only, against a real API server, with a Secret shaped as cert-manager
// fills it and nothing in --cert-dir: not ready while the caBundle does not verify the
// certificate, ready (serving the Secret's certificate) once the CA injector's part is
// done, without any mount.
func TestRunCertManagerFromSecret(t *testing.T) {
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	admin, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The overlay's objects that exist without cert-manager: namespace, ServiceAccount,
	// RBAC, the webhook configuration.
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(),
		filepath.Join("..", "..", "manifests", "overlays", "cert-manager"))
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"} {
		for _, r := range rm.Resources() {
			if r.GetKind() != kind {
				continue
			}
			m, err := r.Map()
			if err != nil {
				t.Fatal(err)
			}
			if err := admin.Create(ctx, &unstructured.Unstructured{Object: m}); err != nil {
				t.Fatalf("create %s %s: %v", kind, r.GetName(), err)
			}
		}
	}
	const dns = "leasehold-webhook.leasehold-system.svc"
	caPEM, certPEM, keyPEM := caAndLeaf(t, dns)
	if err := admin.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "leasehold-webhook-tls", Namespace: "leasehold-system"},
		Type: corev1.SecretTypeTLS, Data: map[string][]byte{"ca.crt": caPEM, "tls.crt": certPEM, "tls.key": keyPEM}}); err != nil {
		t.Fatal(err)
	}

	user, err := env.AddUser(envtestUser(), nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(dir, "certs")
	if err := os.Mkdir(certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	port, probePort := testenv.FreePort(t), testenv.FreePort(t)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--kubeconfig=" + kubeconfig, "--cert-dir=" + certDir, "--namespace=leasehold-system",
			"--self-signed-certs=false", "--cert-from-secret", "--metrics-bind-address=0",
			"--webhook-port=" + strconv.Itoa(port), "--health-probe-bind-address=127.0.0.1:" + strconv.Itoa(probePort)})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("run did not return after cancel")
		}
	})
	readyz := func() int {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probePort))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		select {
		case err := <-done:
			return false, fmt.Errorf("run returned: %w", err)
		default:
		}
		return readyz() != 0, nil
	}); err != nil {
		t.Fatalf("probe endpoint not up: %v", err)
	}
	time.Sleep(2 * time.Second) // the Secret is read by now; the caBundle is still empty
	if code := readyz(); code != http.StatusInternalServerError {
		t.Fatalf("/readyz = %d while the caBundle is empty, want 500", code)
	}

	// cert-manager's CA injector.
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := admin.Get(ctx, client.ObjectKey{Name: "leasehold-webhook"}, mwc); err != nil {
		t.Fatal(err)
	}
	mwc.Webhooks[0].ClientConfig.CABundle = caPEM
	if err := admin.Update(ctx, mwc); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		return readyz() == http.StatusOK, nil
	}); err != nil {
		t.Fatalf("/readyz not 200 once the caBundle verifies the certificate: %v", err)
	}
	if files, _ := os.ReadDir(certDir); len(files) != 0 {
		t.Fatalf("--cert-dir holds %v: the test must not mount anything", files)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{RootCAs: pool, ServerName: dns})
	if err != nil {
		t.Fatalf("TLS to the webhook, verified with the CA: %v", err)
	}
	defer conn.Close()
	served := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: conn.ConnectionState().PeerCertificates[0].Raw})
	if string(served) != string(certPEM) {
		t.Errorf("served certificate is not the Secret's tls.crt")
	}
}
