package webhook

import "crypto/tls"

// ModernCipherSuites are the TLS 1.2 suites the webhook and its metrics accept: ECDHE
// key exchange (forward secrecy) with AEAD ciphers only, as Mozilla's "intermediate"
// profile. TLS 1.3 chooses its own (all AEAD).
var ModernCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// SecureTLS hardens a server's TLS configuration (controller-runtime's TLSOpts): TLS 1.2
// or later, ModernCipherSuites at 1.2, and HTTP/1.1 only, as kubebuilder's scaffold
// does: HTTP/2 is turned off against its stream-reset floods (CVE-2023-44487, "rapid
// reset"); the API server talks HTTP/1.1 to webhooks just as well.
func SecureTLS(c *tls.Config) {
	c.MinVersion = tls.VersionTLS12
	c.CipherSuites = ModernCipherSuites
	c.NextProtos = []string{"http/1.1"}
}
