package webhook

import (
	"fmt"
	"net"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// The agent's metrics port and how Prometheus finds it.
const (
	// MetricsPortName names the agent's metrics containerPort; the PodMonitor in
	// manifests/monitoring selects it (with the agent's container name).
	MetricsPortName = "metrics"
	// MetricsPath is where the agent serves its metrics.
	MetricsPath = "/metrics"

	// The scrape annotations of plain Prometheus (kubernetes_sd_configs role: pod with
	// the usual relabeling) that the webhook adds unless the Pod sets any of them.
	AnnotationPrometheusScrape = "prometheus.io/scrape"
	AnnotationPrometheusPort   = "prometheus.io/port"
	AnnotationPrometheusPath   = "prometheus.io/path"
)

// metricsPort is the port of an agent --metrics-bind-address that serves on the Pod's
// IP; 0 when the metrics are off or on loopback only (no Prometheus could reach them).
func metricsPort(addr string) int32 {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return 0
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return 0
	}
	return int32(port)
}

// exposeMetrics declares the agent's metrics port on its container (named
// MetricsPortName) and adds the scrape annotations to the Pod, unless the Pod already
// sets one of them (they are for the app's own metrics then: ScrapeAnnotationsWarning
// says so). Nothing when addr serves no Pod IP.
func exposeMetrics(pod *corev1.Pod, agent *corev1.Container, addr string) {
	port := metricsPort(addr)
	if port == 0 {
		return
	}
	agent.Ports = append(agent.Ports, corev1.ContainerPort{Name: MetricsPortName, ContainerPort: port, Protocol: corev1.ProtocolTCP})
	if podSetsScrapeAnnotations(pod) {
		return
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[AnnotationPrometheusScrape] = "true"
	pod.Annotations[AnnotationPrometheusPort] = strconv.Itoa(int(port))
	pod.Annotations[AnnotationPrometheusPath] = MetricsPath
}

func podSetsScrapeAnnotations(pod *corev1.Pod) bool {
	for _, k := range []string{AnnotationPrometheusScrape, AnnotationPrometheusPort, AnnotationPrometheusPath} {
		if _, ok := pod.Annotations[k]; ok {
			return true
		}
	}
	return false
}

// ScrapeAnnotationsWarning is the admission warning for a Pod whose own scrape
// annotations the webhook left alone although its agent serves metrics ("" if none):
// plain Prometheus scrapes one port per Pod, so the agent's metrics need the PodMonitor
// or a scrape job of their own. original is the Pod as sent, injected as injected.
func ScrapeAnnotationsWarning(original, injected *corev1.Pod) string {
	if !podSetsScrapeAnnotations(original) {
		return ""
	}
	var port int32
	for _, c := range append(append([]corev1.Container{}, injected.Spec.InitContainers...), injected.Spec.Containers...) {
		if isAgent(c) {
			for _, p := range c.Ports {
				if p.Name == MetricsPortName {
					port = p.ContainerPort
				}
			}
		}
	}
	if port == 0 {
		return ""
	}
	a := original.Annotations
	if a[AnnotationPrometheusScrape] == "true" && a[AnnotationPrometheusPort] == strconv.Itoa(int(port)) && a[AnnotationPrometheusPath] == MetricsPath {
		return "" // the webhook's own annotations (a Pod injected before)
	}
	return fmt.Sprintf("leasehold: the Pod sets prometheus.io/* annotations, so the webhook left them as they are and did not announce "+
		"the Leasehold agent's metrics (container %s, port %q = %d, path %s) with them; scrape the agent with the PodMonitor of "+
		"manifests/monitoring or a scrape job of its own, or set %s: \"false\" to turn the agent's metrics off",
		AgentContainerName, MetricsPortName, port, MetricsPath, AnnotationMetrics)
}
