package webhook

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// selfSigned returns a PEM certificate and key for dnsName, signed by itself.
func selfSigned(t *testing.T, dnsName string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: dnsName},
		DNSNames: []string{dnsName}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// SecretCertificate serves what the Secret holds, read through a real API server, and
// follows its changes; before the Secret is filled it serves nothing.
func TestSecretCertificateFollowsTheSecret(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(testenv.Start(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "leasehold-system"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// As manifests/base creates it: empty.
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "leasehold-webhook-tls", Namespace: ns.Name}}
	if _, err := cs.CoreV1().Secrets(ns.Name).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sc := NewSecretCertificate(cs, ns.Name, sec.Name, testr.New(t))
	done := make(chan struct{})
	go func() { defer close(done); _ = sc.Start(ctx) }()
	defer func() { cancel(); <-done }()

	time.Sleep(time.Second) // the watch has seen the empty Secret
	if c, err := sc.GetCertificate(nil); err == nil {
		t.Fatalf("an empty Secret served a certificate: %v", c)
	}
	const dns = "leasehold-webhook.leasehold-system.svc"
	served := func(want []byte) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			c, err := sc.GetCertificate(nil)
			return err == nil && bytes.Equal(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), want), nil
		}); err != nil {
			t.Fatalf("the Secret's certificate is not served within 10s")
		}
	}
	for i := 0; i < 2; i++ { // filled, then renewed
		crt, key := selfSigned(t, dns)
		sec.Data = map[string][]byte{"tls.crt": crt, "tls.key": key, "ca.crt": crt}
		var err error
		if sec, err = cs.CoreV1().Secrets(ns.Name).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		served(crt)
		if err := sc.VerifiedBy(crt, dns); err != nil {
			t.Errorf("its own CA does not verify the served certificate: %v", err)
		}
		other, _ := selfSigned(t, dns)
		if err := sc.VerifiedBy(other, dns); err == nil {
			t.Error("another CA verifies the served certificate")
		}
		if err := sc.VerifiedBy(crt, "other.leasehold-system.svc"); err == nil {
			t.Error("the served certificate verifies for another name")
		}
	}
	select {
	case <-sc.Loaded():
	default:
		t.Error("Loaded() is not closed")
	}

	// A broken key pair is not served: the previous certificate stays.
	good, _ := sc.GetCertificate(nil)
	sec.Data["tls.key"] = []byte("not a key")
	if _, err := cs.CoreV1().Secrets(ns.Name).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if now, err := sc.GetCertificate(nil); err != nil || !bytes.Equal(now.Certificate[0], good.Certificate[0]) {
		t.Errorf("after a broken update: %v, %v; want the previous certificate", now, err)
	}
}
