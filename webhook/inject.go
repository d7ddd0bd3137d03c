package webhook

import (
	"fmt"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"
)

// DefaultContainerAnnotation is kubectl's default container for logs and exec. In
// plain-container mode the agent comes first in spec.containers, so the webhook points
// this at the first app container (unless the user set it).
const DefaultContainerAnnotation = "kubectl.kubernetes.io/default-container"

// Inject adds the lock agent to pod as cfg and opts say. It is pure (no I/O) and
// idempotent: injecting its own output changes nothing. The agent container and its
// token volume are always the computed ones: a container or projected volume the user
// gave their names is replaced. Where the Pod already uses the
// agent's names in a way the agent cannot share (a volume called leasehold-socket that
// is not an emptyDir, another volume at /run/leasehold, LEASEHOLD_SOCKET set to
// something else, the TCP port taken by a container port), it returns the conflicts
// and leaves pod unchanged. A container that sets LEASEHOLD_CLI itself keeps its value
// (its image may have its own client).
func Inject(pod *corev1.Pod, cfg *Config, opts Options) field.ErrorList {
	if errs := conflicts(pod, cfg, opts); len(errs) > 0 {
		return errs
	}
	spec := &pod.Spec
	opts.AgentMetricsBindAddress = agentMetricsAddress(spec, cfg, opts.AgentMetricsBindAddress)
	want := agentContainer(cfg, opts, spec.ServiceAccountName != "")
	exposeMetrics(pod, &want, opts.AgentMetricsBindAddress)
	if guaranteed(spec) {
		// Requests below limits would make the Pod Burstable: a Guaranteed Pod's agent
		// requests what it is limited to.
		want.Resources.Requests = want.Resources.Limits.DeepCopy()
	}

	// The agent: always the computed container, in its place. A container the user
	// named like the agent is never kept, even with the agent's image and arguments (it
	// could be privileged, or carry another Pod's identity); the computed one sets every
	// field the API server defaults, so re-injecting a stored Pod changes nothing.
	spec.InitContainers = slices.DeleteFunc(spec.InitContainers, isAgent)
	spec.Containers = slices.DeleteFunc(spec.Containers, isAgent)
	if opts.PlainContainer {
		if len(spec.Containers) > 0 {
			setAnnotationIfAbsent(pod, DefaultContainerAnnotation, spec.Containers[0].Name)
		}
		spec.Containers = slices.Insert(spec.Containers, 0, want)
	} else {
		spec.InitContainers = slices.Insert(spec.InitContainers, 0, want)
	}

	if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == SocketVolumeName }) {
		spec.Volumes = append(spec.Volumes, corev1.Volume{
			Name:         SocketVolumeName,
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
		})
	}

	// The agent's own token needs a ServiceAccount, which the API server's
	// ServiceAccount admission always sets before webhooks run (only an API server
	// without that plugin, such as a bare envtest, leaves it empty).
	if spec.ServiceAccountName != "" {
		// A volume the user named like it is replaced in place by the computed one.
		if i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == TokenVolumeName }); i >= 0 {
			spec.Volumes[i] = tokenVolume()
		} else {
			spec.Volumes = append(spec.Volumes, tokenVolume())
		}
	}

	env := []corev1.EnvVar{{Name: EnvSocket, Value: SocketPath}, {Name: EnvCLI, Value: CLIPath}}
	if cfg.TCPPort != 0 {
		env = append(env, corev1.EnvVar{Name: EnvURL, Value: agentURL(cfg.TCPPort)})
	}
	for _, c := range appContainers(spec) {
		// Read-only in every container but the agent's, a mount the user wrote too:
		// connecting to the socket and running the client need no write access, and a
		// container that could write there could replace the client that the other
		// containers run, or the socket they trust.
		if i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == SocketVolumeName }); i >= 0 {
			c.VolumeMounts[i].ReadOnly = true
		} else {
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: SocketVolumeName, MountPath: SocketDir, ReadOnly: true})
		}
		for _, e := range env {
			if !slices.ContainsFunc(c.Env, func(have corev1.EnvVar) bool { return have.Name == e.Name }) {
				c.Env = append(c.Env, e)
			}
		}
	}

	if spec.SecurityContext == nil {
		spec.SecurityContext = &corev1.PodSecurityContext{}
	}
	if !slices.Contains(spec.SecurityContext.SupplementalGroups, opts.SocketGroup) {
		spec.SecurityContext.SupplementalGroups = append(spec.SecurityContext.SupplementalGroups, opts.SocketGroup)
	}

	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[AnnotationStatus] = StatusInjected
	return nil
}

func isAgent(c corev1.Container) bool { return c.Name == AgentContainerName }

// guaranteed reports whether the Pod's own containers make it QoS class Guaranteed:
// each init and app container (the agent aside) has CPU and memory limits and requests
// equal to them (a missing request counts as its limit, as the API server defaults it).
// With Pod-level resources the Pod's class does not depend on its containers.
func guaranteed(spec *corev1.PodSpec) bool {
	if spec.Resources != nil && (len(spec.Resources.Requests) > 0 || len(spec.Resources.Limits) > 0) {
		return false
	}
	apps := appContainers(spec)
	if len(apps) == 0 {
		return false
	}
	for _, c := range apps {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			limit, ok := c.Resources.Limits[r]
			if !ok || limit.IsZero() {
				return false
			}
			if req, ok := c.Resources.Requests[r]; ok && !req.Equal(limit) {
				return false
			}
		}
	}
	return true
}

// appContainers are every init and app container except the agent.
func appContainers(spec *corev1.PodSpec) []*corev1.Container {
	var out []*corev1.Container
	for i := range spec.InitContainers {
		if !isAgent(spec.InitContainers[i]) {
			out = append(out, &spec.InitContainers[i])
		}
	}
	for i := range spec.Containers {
		if !isAgent(spec.Containers[i]) {
			out = append(out, &spec.Containers[i])
		}
	}
	return out
}

func setAnnotationIfAbsent(pod *corev1.Pod, k, v string) {
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	if _, ok := pod.Annotations[k]; !ok {
		pod.Annotations[k] = v
	}
}

func agentURL(port int32) string { return "http://127.0.0.1:" + strconv.Itoa(int(port)) }

// conflicts lists what in the Pod the agent cannot share.
func conflicts(pod *corev1.Pod, cfg *Config, opts Options) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	for i, v := range pod.Spec.Volumes {
		if v.Name == SocketVolumeName && v.EmptyDir == nil {
			errs = append(errs, field.Invalid(spec.Child("volumes").Index(i).Child("name"), v.Name, fmt.Sprintf(
				"the volume name %q is reserved for the Leasehold agent's socket (an emptyDir); fix: rename this volume", SocketVolumeName)))
		}
		if v.Name == TokenVolumeName && v.Projected == nil {
			errs = append(errs, field.Invalid(spec.Child("volumes").Index(i).Child("name"), v.Name, fmt.Sprintf(
				"the volume name %q is reserved for the Leasehold agent's ServiceAccount token; fix: rename this volume", TokenVolumeName)))
		}
	}
	wantEnv := map[string]string{EnvSocket: SocketPath}
	if cfg.TCPPort != 0 {
		wantEnv[EnvURL] = agentURL(cfg.TCPPort)
	}
	check := func(p *field.Path, c corev1.Container) {
		if isAgent(c) {
			return
		}
		for j, m := range c.VolumeMounts {
			mp := p.Child("volumeMounts").Index(j)
			switch {
			case m.Name != SocketVolumeName && path.Clean(m.MountPath) == SocketDir:
				errs = append(errs, field.Invalid(mp.Child("mountPath"), m.MountPath, fmt.Sprintf(
					"%s is where the Leasehold agent's socket volume is mounted; fix: mount volume %q elsewhere", SocketDir, m.Name)))
			case m.Name == SocketVolumeName && path.Clean(m.MountPath) != SocketDir:
				errs = append(errs, field.Invalid(mp.Child("mountPath"), m.MountPath, fmt.Sprintf(
					"the Leasehold socket volume must be mounted at %s (where %s points); fix: remove this mount, the webhook adds it",
					SocketDir, EnvSocket)))
			}
		}
		for j, e := range c.Env {
			want, ours := wantEnv[e.Name]
			if ours && (e.ValueFrom != nil || e.Value != want) {
				errs = append(errs, field.Invalid(p.Child("env").Index(j), e.Name, fmt.Sprintf(
					"%s is set by the Leasehold webhook to %q; fix: remove it from container %q", e.Name, want, c.Name)))
			}
		}
		if cfg.TCPPort != 0 {
			for j, port := range c.Ports {
				if port.ContainerPort == cfg.TCPPort {
					errs = append(errs, field.Invalid(p.Child("ports").Index(j).Child("containerPort"), port.ContainerPort, fmt.Sprintf(
						"container %q uses port %d, which %s asks the agent to listen on; fix: choose another %s",
						c.Name, port.ContainerPort, AnnotationTCPPort, AnnotationTCPPort)))
				}
			}
		}
	}
	for i, c := range pod.Spec.InitContainers {
		check(spec.Child("initContainers").Index(i), c)
	}
	for i, c := range pod.Spec.Containers {
		check(spec.Child("containers").Index(i), c)
	}
	if cfg.TCPPort != 0 && pod.Spec.HostNetwork {
		errs = append(errs, invalid(AnnotationTCPPort, strconv.Itoa(int(cfg.TCPPort)),
			"the Pod uses hostNetwork, so the port would be on the node's loopback, open to every host-network Pod; "+
				"fix: remove "+AnnotationTCPPort+" and use the Unix socket ("+EnvSocket+")"))
	}
	return errs
}

// agentMetricsAddress is the agent's --metrics-bind-address in this Pod: addr, unless
// a container of the Pod declares its port (TCP) or leasehold.io/tcp-port names it;
// then the next port that nothing in the Pod declares. leasehold.io/metrics: "false"
// turns the metrics off. Containers share the Pod's
// network namespace, so an app listening on the agent's port would fail to start (the
// agent, a native sidecar, binds first). In a hostNetwork Pod the metrics are off: the
// node's loopback is shared by every host-network Pod, and two agents would fight over
// the port.
func agentMetricsAddress(spec *corev1.PodSpec, cfg *Config, addr string) string {
	if spec.HostNetwork || cfg.MetricsOff {
		return "0"
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return addr // "0" (off), or refused by Options.Validate
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 {
		return addr
	}
	used := map[int]bool{int(cfg.TCPPort): cfg.TCPPort != 0}
	for _, c := range appContainers(spec) {
		for _, p := range c.Ports {
			if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
				used[int(p.ContainerPort)] = true
			}
		}
	}
	for p, tried := port, 0; tried < 65535; p, tried = p+1, tried+1 {
		if p > 65535 {
			p = 1024
		}
		if !used[p] {
			return net.JoinHostPort(host, strconv.Itoa(p))
		}
	}
	return "0"
}

// tokenVolume is the kubelet's kube-api-access volume, for the agent alone.
func tokenVolume() corev1.Volume {
	return corev1.Volume{Name: TokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: ptr.To[int32](0o644),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To[int64](TokenExpirationSeconds)}},
			{ConfigMap: &corev1.ConfigMapProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}},
			}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{
				Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"},
			}}}},
		},
	}}}
}

// AgentArgs is the agent's command line for cfg, as the contract fixes it.
func AgentArgs(cfg *Config, opts Options) []string {
	args := []string{
		"--namespace=$(POD_NAMESPACE)",
		"--pod-name=$(POD_NAME)",
		"--pod-uid=$(POD_UID)",
		"--locks=" + strings.Join(cfg.Locks, ","),
		"--leader=" + strings.Join(cfg.Leader, ","),
		"--lease-duration=" + cfg.LeaseDuration.String(),
		"--renew-deadline=" + cfg.RenewDeadline.String(),
		"--retry-period=" + cfg.RetryPeriod.String(),
		"--socket=" + SocketPath,
		"--probe-socket=" + ProbeSocketPath,
		"--tcp-port=" + strconv.Itoa(int(cfg.TCPPort)),
		"--metrics-bind-address=" + opts.AgentMetricsBindAddress,
	}
	if cfg.GraceSet {
		// Only when the Pod sets it, as for semaphores below: the agent's default is
		// contract.DefaultGrace.
		args = append(args, "--grace="+cfg.Grace.String())
	}
	if len(cfg.Semaphores) > 0 {
		// Only when declared, so that Pods without semaphores run on older agent images.
		sems := make([]string, len(cfg.Semaphores))
		for i, s := range cfg.Semaphores {
			sems[i] = s.Name + "=" + strconv.Itoa(s.Size)
		}
		args = append(args, "--semaphores="+strings.Join(sems, ","))
	}
	return args
}

func fieldEnv(name, fieldPath string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: fieldPath},
	}}
}

func probe(endpoint string, period, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
			Command: []string{AgentBinary, "--probe=" + endpoint, "--socket=" + ProbeSocketPath},
		}},
		TimeoutSeconds:   1,
		PeriodSeconds:    period,
		SuccessThreshold: 1,
		FailureThreshold: failures,
	}
}

// agentContainer is the injected container. Every field the API server would default
// is set, so that the stored Pod equals what the webhook computed.
func agentContainer(cfg *Config, opts Options, token bool) corev1.Container {
	c := corev1.Container{
		Name:    AgentContainerName,
		Image:   opts.AgentImage,
		Command: []string{AgentBinary},
		Args:    AgentArgs(cfg, opts),
		Env: []corev1.EnvVar{
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_UID", "metadata.uid"),
			// The agent sets its Go memory limit from it (sidecar/agent.SetMemoryLimit).
			{Name: EnvMemoryLimit, ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{
				ContainerName: AgentContainerName, Resource: "limits.memory", Divisor: resource.MustParse("1"),
			}}},
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: opts.CPURequest, corev1.ResourceMemory: opts.MemoryRequest},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: opts.CPULimit, corev1.ResourceMemory: opts.MemoryLimit},
		},
		VolumeMounts:             []corev1.VolumeMount{{Name: SocketVolumeName, MountPath: SocketDir}},
		StartupProbe:             probe("/healthz", 1, 60),
		ReadinessProbe:           probe("/readyz", 5, 3),
		TerminationMessagePath:   corev1.TerminationMessagePathDefault,
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		ImagePullPolicy:          opts.AgentImagePullPolicy,
		SecurityContext: &corev1.SecurityContext{
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			Privileged:               ptr.To(false),
			RunAsUser:                ptr.To(AgentUID),
			RunAsGroup:               ptr.To(opts.SocketGroup), // the socket's group
			RunAsNonRoot:             ptr.To(true),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	if token {
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: TokenVolumeName, MountPath: ServiceAccountTokenDir, ReadOnly: true})
	}
	if !opts.PlainContainer {
		c.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
	}
	return c
}
