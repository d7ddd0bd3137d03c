package kubeapi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// kubeconfigFile is the subset of a kubeconfig the agent reads.
type kubeconfigFile struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server   string `json:"server"`
			CAData   []byte `json:"certificate-authority-data"`
			CAFile   string `json:"certificate-authority"`
			Insecure bool   `json:"insecure-skip-tls-verify"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			Token     string `json:"token"`
			TokenFile string `json:"tokenFile"`
			CertData  []byte `json:"client-certificate-data"`
			CertFile  string `json:"client-certificate"`
			KeyData   []byte `json:"client-key-data"`
			KeyFile   string `json:"client-key"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
}

// Config returns the client configuration: from the kubeconfig file at path (or
// $KUBECONFIG) when given, else in-cluster.
func Config(path string) (*rest.Config, error) {
	if path == "" {
		path = os.Getenv("KUBECONFIG")
	}
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig: %w", err)
	}
	var kc kubeconfigFile
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return nil, fmt.Errorf("parse kubeconfig %s: %w", path, err)
	}
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(filepath.Dir(path), p)
	}
	ctxName := kc.CurrentContext
	var clusterName, userName string
	found := false
	for _, c := range kc.Contexts {
		if c.Name == ctxName {
			clusterName, userName, found = c.Context.Cluster, c.Context.User, true
		}
	}
	if !found {
		return nil, fmt.Errorf("kubeconfig %s: current-context %q not found: set current-context", path, ctxName)
	}
	cfg := &rest.Config{}
	found = false
	for _, c := range kc.Clusters {
		if c.Name == clusterName {
			found = true
			cfg.Host = c.Cluster.Server
			cfg.TLSClientConfig.CAData = c.Cluster.CAData
			cfg.TLSClientConfig.CAFile = rel(c.Cluster.CAFile)
			cfg.TLSClientConfig.Insecure = c.Cluster.Insecure
		}
	}
	if !found {
		return nil, fmt.Errorf("kubeconfig %s: cluster %q of context %q not found", path, clusterName, ctxName)
	}
	for _, u := range kc.Users {
		if u.Name == userName {
			cfg.BearerToken = u.User.Token
			cfg.BearerTokenFile = rel(u.User.TokenFile)
			cfg.TLSClientConfig.CertData = u.User.CertData
			cfg.TLSClientConfig.CertFile = rel(u.User.CertFile)
			cfg.TLSClientConfig.KeyData = u.User.KeyData
			cfg.TLSClientConfig.KeyFile = rel(u.User.KeyFile)
		}
	}
	if cfg.Host == "" {
		return nil, errors.New("kubeconfig " + path + ": the cluster has no server")
	}
	return cfg, nil
}
