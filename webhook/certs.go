package webhook

import (
	"fmt"
	"time"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// CertOptions name what the self-managed TLS maintains.
type CertOptions struct {
	// Namespace, SecretName: the Secret holding ca.crt, ca.key, tls.crt, tls.key. It is
	// mounted into the webhook Pods at CertDir.
	Namespace, SecretName string
	// ServiceName is the webhook's Service; the serving certificate is for
	// <ServiceName>.<Namespace>.svc (and .svc.cluster.local).
	ServiceName string
	// WebhookConfigName is the MutatingWebhookConfiguration whose caBundle is kept current.
	WebhookConfigName string
	// CertDir is where the Secret is mounted.
	CertDir string
	// ServerCertValidity, CAValidity: how long a new serving certificate and a new CA
	// are valid; RenewBefore: how long before its end a certificate is replaced;
	// CheckEvery: how often that is checked. Zero means cert-controller's defaults
	// (1 year, 10 years, 90 days, 12 hours).
	ServerCertValidity, CAValidity, RenewBefore, CheckEvery time.Duration
	// ControllerName names the rotator's controller (default "cert-rotator"); names
	// must be unique within a process.
	ControllerName string
}

// AddCertRotator adds open-policy-agent/cert-controller's rotator to mgr: it creates a
// CA and a serving certificate in the Secret, renews them before they expire, and
// writes the CA into the webhook configuration's caBundle. The returned channel is
// closed once the certificate is mounted and the CA injected; serve (and report ready)
// only after that.
func AddCertRotator(mgr manager.Manager, o CertOptions) (<-chan struct{}, error) {
	ready := make(chan struct{})
	dns := fmt.Sprintf("%s.%s.svc", o.ServiceName, o.Namespace)
	err := rotator.AddRotator(mgr, &rotator.CertRotator{
		SecretKey:      types.NamespacedName{Namespace: o.Namespace, Name: o.SecretName},
		CertDir:        o.CertDir,
		CAName:         "leasehold-ca",
		CAOrganization: "leasehold",
		DNSName:        dns,
		ExtraDNSNames:  []string{dns + ".cluster.local"},
		IsReady:        ready,
		Webhooks:       []rotator.WebhookInfo{{Name: o.WebhookConfigName, Type: rotator.Mutating}},
		// Every replica rotates; the Secret's resourceVersion settles conflicts.
		RequireLeaderElection:  false,
		EnableReadinessCheck:   true,
		FieldOwner:             "leasehold-webhook",
		ServerCertDuration:     o.ServerCertValidity,
		CaCertDuration:         o.CAValidity,
		LookaheadInterval:      o.RenewBefore,
		RotationCheckFrequency: o.CheckEvery,
		ControllerName:         o.ControllerName,
	})
	if err != nil {
		return nil, fmt.Errorf("add cert rotator: %w", err)
	}
	return ready, nil
}
