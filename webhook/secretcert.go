package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// SecretCertificate serves the webhook's certificate straight from its Secret, read
// through the API (a watch on that one Secret), instead of from the mounted volume. The
// kubelet projects a changed Secret into a volume only on its next sync of the Pod (its
// syncFrequency, one minute by default, plus its cache's TTL), so a replica that waited
// for the mount was not ready for about a minute after the first install; with this it
// serves, and reports ready, as soon as the rotator has written the Secret and the
// caBundle. Renewals are picked up when the watch sees them. It needs get, list and
// watch on Secrets in its namespace, which the rotator needs too
// (manifests/base/rbac.yaml).
//
// Hand-written rather than controller-runtime's certwatcher, which watches files only.
type SecretCertificate struct {
	client          kubernetes.Interface
	namespace, name string
	log             logr.Logger

	cert   atomic.Pointer[servedCert]
	loaded chan struct{}
	once   sync.Once
}

type servedCert struct {
	tls     tls.Certificate
	certPEM []byte
}

// NewSecretCertificate watches Secret namespace/name (tls.crt, tls.key) once Start runs.
func NewSecretCertificate(c kubernetes.Interface, namespace, name string, log logr.Logger) *SecretCertificate {
	return &SecretCertificate{client: c, namespace: namespace, name: name, log: log, loaded: make(chan struct{})}
}

// Start watches the Secret until ctx ends (a manager.Runnable).
func (s *SecretCertificate) Start(ctx context.Context) error {
	lw := cache.NewListWatchFromClient(s.client.CoreV1().RESTClient(), "secrets", s.namespace,
		fields.OneTermEqualSelector("metadata.name", s.name))
	_, informer := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &corev1.Secret{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { s.update(o) },
			UpdateFunc: func(_, o any) { s.update(o) },
		},
	})
	informer.RunWithContext(ctx)
	return nil
}

// NeedLeaderElection is false: every replica serves.
func (s *SecretCertificate) NeedLeaderElection() bool { return false }

func (s *SecretCertificate) update(o any) {
	sec, ok := o.(*corev1.Secret)
	if !ok {
		return
	}
	crt, key := sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey]
	if len(crt) == 0 || len(key) == 0 {
		return // not filled yet
	}
	if cur := s.cert.Load(); cur != nil && bytes.Equal(cur.certPEM, crt) {
		return
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		s.log.Error(err, "Secret holds no usable serving certificate; still serving the previous one", "secret", s.namespace+"/"+s.name)
		return
	}
	s.cert.Store(&servedCert{tls: pair, certPEM: crt})
	kv := []any{"secret", s.namespace + "/" + s.name}
	if pair.Leaf != nil { // filled by X509KeyPair since Go 1.23
		kv = append(kv, "notAfter", pair.Leaf.NotAfter)
	}
	s.log.Info("Serving the certificate of the Secret", kv...)
	s.once.Do(func() { close(s.loaded) })
}

// GetCertificate is tls.Config's GetCertificate: the Secret's current certificate.
func (s *SecretCertificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.cert.Load(); c != nil {
		return &c.tls, nil
	}
	return nil, fmt.Errorf("no serving certificate yet: Secret %s/%s has no %s", s.namespace, s.name, corev1.TLSCertKey)
}

// Loaded is closed once a certificate is being served.
func (s *SecretCertificate) Loaded() <-chan struct{} { return s.loaded }

// VerifiedBy reports why caBundle does not verify the served certificate for dnsName,
// or nil if it does.
func (s *SecretCertificate) VerifiedBy(caBundle []byte, dnsName string) error {
	c := s.cert.Load()
	if c == nil {
		return errors.New("no serving certificate yet")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caBundle) {
		return errors.New("the caBundle is empty")
	}
	leaf := c.tls.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.tls.Certificate[0]); err != nil {
			return err
		}
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: dnsName})
	return err
}

// WaitTrusted returns once every webhook of MutatingWebhookConfiguration configName has
// a caBundle that verifies the served certificate for dnsName (the API server then
// trusts this replica), or when ctx ends. It polls: the rotator writes the caBundle
// moments after the Secret.
func (s *SecretCertificate) WaitTrusted(ctx context.Context, configName, dnsName string) error {
	var last error
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case <-s.loaded:
		default:
			last = errors.New("no serving certificate yet")
			return false, nil
		}
		mwc, err := s.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, configName, metav1.GetOptions{})
		if err != nil {
			last = err
			return false, nil
		}
		for _, w := range mwc.Webhooks {
			if err := s.VerifiedBy(w.ClientConfig.CABundle, dnsName); err != nil {
				last = fmt.Errorf("webhook %s: %w", w.Name, err)
				return false, nil
			}
		}
		return len(mwc.Webhooks) > 0, nil
	})
	if err != nil {
		return fmt.Errorf("the caBundle of %s does not verify the served certificate (%v): %w", configName, last, err)
	}
	return nil
}
