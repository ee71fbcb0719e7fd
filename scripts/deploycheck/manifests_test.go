package deploycheck

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// object is one Kubernetes object of a manifest.
type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	node *yaml.Node
}

// decode decodes the whole object into v.
func (o object) decode(t *testing.T, v any) {
	t.Helper()
	if err := o.node.Decode(v); err != nil {
		t.Fatalf("%s %s: %v", o.Kind, o.Metadata.Name, err)
	}
}

// parseYAML decodes every document of a YAML stream.
func parseYAML(b []byte) ([]object, error) {
	var objs []object
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(n.Content) == 0 {
			continue // an empty document
		}
		var o object
		if err := n.Decode(&o); err != nil {
			return nil, err
		}
		if o.APIVersion == "" || o.Kind == "" {
			return nil, fmt.Errorf("a document without apiVersion or kind (line %d)", n.Line)
		}
		o.node = &n
		objs = append(objs, o)
	}
}

// TestManifestsParse parses every YAML file under deploy/k8s, whether
// kustomization.yaml lists it or not.
func TestManifestsParse(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "deploy", "k8s")
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return err
		}
		if strings.HasSuffix(path, "_test.yaml") {
			return nil // promtool's rule tests, not manifests (go test ./deploy/k8s/monitoring runs them)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if _, err := parseYAML(b); err != nil {
			t.Errorf("%s: %v", path, err)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("no YAML file under %s", dir)
	}
}

// render runs kustomize build on a directory of the repository.
func render(t *testing.T, dir string) []object {
	t.Helper()
	cmd := exec.Command(tool(t, "kustomize"), "build", dir)
	cmd.Dir = repoRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kustomize build %s: %v\n%s", dir, err, stderr.String())
	}
	objs, err := parseYAML(out)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return objs
}

func find(t *testing.T, objs []object, kind, name string) object {
	t.Helper()
	for _, o := range objs {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	t.Fatalf("no %s %s in the rendered manifests", kind, name)
	return object{}
}

// The parts of a StatefulSet, a NetworkPolicy and a ConfigMap the checks
// read.
type (
	statefulSet struct {
		Spec struct {
			Template struct {
				Metadata struct {
					Labels map[string]string `yaml:"labels"`
				} `yaml:"metadata"`
				Spec podSpec `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	podSpec struct {
		ServiceAccountName           string `yaml:"serviceAccountName"`
		AutomountServiceAccountToken *bool  `yaml:"automountServiceAccountToken"`
		SecurityContext              struct {
			RunAsUser  *int64 `yaml:"runAsUser"`
			RunAsGroup *int64 `yaml:"runAsGroup"`
		} `yaml:"securityContext"`
		Containers []container `yaml:"containers"`
		Volumes    []volume    `yaml:"volumes"`
	}
	container struct {
		Name    string   `yaml:"name"`
		Image   string   `yaml:"image"`
		Env     []envVar `yaml:"env"`
		EnvFrom []struct {
			ConfigMapRef *struct {
				Name string `yaml:"name"`
			} `yaml:"configMapRef"`
		} `yaml:"envFrom"`
		Ports []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		StartupProbe   *probe `yaml:"startupProbe"`
		LivenessProbe  *probe `yaml:"livenessProbe"`
		ReadinessProbe *probe `yaml:"readinessProbe"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
			SubPath   string `yaml:"subPath"`
			ReadOnly  bool   `yaml:"readOnly"`
		} `yaml:"volumeMounts"`
	}
	envVar struct {
		Name      string  `yaml:"name"`
		Value     *string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
			SecretKeyRef *struct {
				Name     string `yaml:"name"`
				Key      string `yaml:"key"`
				Optional *bool  `yaml:"optional"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `yaml:"path"`
			Port any    `yaml:"port"`
		} `yaml:"httpGet"`
		PeriodSeconds    int `yaml:"periodSeconds"`
		FailureThreshold int `yaml:"failureThreshold"`
	}
	volume struct {
		Name   string `yaml:"name"`
		Secret *struct {
			SecretName string `yaml:"secretName"`
			Optional   *bool  `yaml:"optional"`
		} `yaml:"secret"`
	}
	networkPolicy struct {
		Spec struct {
			PodSelector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"podSelector"`
			PolicyTypes []string `yaml:"policyTypes"`
			Ingress     []struct {
				From []struct {
					NamespaceSelector *struct {
						MatchLabels map[string]string `yaml:"matchLabels"`
					} `yaml:"namespaceSelector"`
				} `yaml:"from"`
				Ports []netPort `yaml:"ports"`
			} `yaml:"ingress"`
			Egress []struct {
				To    []any     `yaml:"to"`
				Ports []netPort `yaml:"ports"`
			} `yaml:"egress"`
		} `yaml:"spec"`
	}
	netPort struct {
		Protocol string `yaml:"protocol"`
		Port     any    `yaml:"port"`
	}
	configMap struct {
		Data map[string]string `yaml:"data"`
	}
	service struct {
		Spec struct {
			Selector map[string]string `yaml:"selector"`
			Ports    []struct {
				Name       string `yaml:"name"`
				Port       int    `yaml:"port"`
				TargetPort any    `yaml:"targetPort"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
)

// TestManifestsRender renders deploy/k8s with kustomize and checks the
// production defaults of issue 9 on what would be applied.
func TestManifestsRender(t *testing.T) {
	objs := render(t, "deploy/k8s")
	for _, o := range objs {
		if o.Kind != "Namespace" && o.Metadata.Namespace != "ksaga" {
			t.Errorf("%s %s: namespace %q, want ksaga", o.Kind, o.Metadata.Name, o.Metadata.Namespace)
		}
	}

	var sts statefulSet
	find(t, objs, "StatefulSet", "sagad").decode(t, &sts)
	pod := sts.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("sagad pods have %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	env := map[string]envVar{}
	order := map[string]int{}
	for i, e := range c.Env {
		env[e.Name], order[e.Name] = e, i
	}
	value := func(name string) string {
		if e, ok := env[name]; ok && e.Value != nil {
			return *e.Value
		}
		return ""
	}
	var cm configMap
	find(t, objs, "ConfigMap", "sagad-config").decode(t, &cm)

	t.Run("image", func(t *testing.T) {
		want := "ghcr.io/ksaga/sagad:" + makeVersion(t) + "@sha256:"
		if !strings.HasPrefix(c.Image, want) || !pinnedImage.MatchString(c.Image) {
			t.Errorf("image %q, want %s<digest> (make image's VERSION and digest): pin both in kustomization.yaml (make pin-image)", c.Image, want)
		}
	})

	t.Run("required config", func(t *testing.T) {
		if value("KSAGA_REQUIRE_CONFIG") != "true" {
			t.Error("KSAGA_REQUIRE_CONFIG is not \"true\" in the container's env")
		}
		if len(c.EnvFrom) == 0 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != "sagad-config" {
			t.Error("the container does not take its KSAGA_* settings from the ConfigMap sagad-config (envFrom)")
		}
		for _, k := range []string{"KSAGA_KAFKA_BROKERS", "KSAGA_REDIS_ADDR"} {
			if cm.Data[k] == "" {
				t.Errorf("sagad-config has no %s", k)
			}
		}
	})

	t.Run("transactional id", func(t *testing.T) {
		// <namespace>-<pod>, from the downward API, each variable defined
		// before the one that refers to it.
		for name, path := range map[string]string{"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"} {
			e, ok := env[name]
			if !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
				t.Errorf("%s is not the downward API's %s", name, path)
			} else if order[name] > order["KSAGA_TRANSACTIONAL_ID"] {
				t.Errorf("%s comes after KSAGA_TRANSACTIONAL_ID, which cannot refer to it then", name)
			}
		}
		if v := value("KSAGA_TRANSACTIONAL_ID"); v != "$(POD_NAMESPACE)-$(POD_NAME)" {
			t.Errorf("KSAGA_TRANSACTIONAL_ID = %q, want $(POD_NAMESPACE)-$(POD_NAME)", v)
		}
		if _, ok := cm.Data["KSAGA_TRANSACTIONAL_ID"]; ok {
			t.Error("sagad-config sets KSAGA_TRANSACTIONAL_ID: it must be per pod")
		}
	})

	t.Run("probes", func(t *testing.T) {
		metricsPort := 0
		for _, p := range c.Ports {
			if p.Name == "metrics" {
				metricsPort = p.ContainerPort
			}
		}
		if want := ":" + strconv.Itoa(metricsPort); metricsPort == 0 || cm.Data["KSAGA_METRICS_ADDR"] != want {
			t.Errorf("container port metrics %d, KSAGA_METRICS_ADDR %q: they must agree", metricsPort, cm.Data["KSAGA_METRICS_ADDR"])
		}
		for name, p := range map[string]*probe{"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("no %s (httpGet)", name)
				continue
			}
			if p.HTTPGet.Path != "/healthz" && p.HTTPGet.Path != "/readyz" {
				t.Errorf("%s on %s: sagad serves /healthz and /readyz", name, p.HTTPGet.Path)
			}
			if port := fmt.Sprint(p.HTTPGet.Port); port != "metrics" && port != strconv.Itoa(metricsPort) {
				t.Errorf("%s on port %s, want the metrics port", name, port)
			}
		}
	})

	t.Run("memory", func(t *testing.T) {
		req, err1 := parseQuantity(c.Resources.Requests["memory"])
		limit, err2 := parseQuantity(c.Resources.Limits["memory"])
		gomem, err3 := parseGoMemLimit(value("GOMEMLIMIT"))
		if err := errors.Join(err1, err2, err3); err != nil {
			t.Fatalf("memory request %q, limit %q, GOMEMLIMIT %q: %v", c.Resources.Requests["memory"],
				c.Resources.Limits["memory"], value("GOMEMLIMIT"), err)
		}
		if req > limit {
			t.Errorf("memory request %d > limit %d", req, limit)
		}
		if gomem >= limit*9/10 {
			t.Errorf("GOMEMLIMIT %d is not below 90%% of the memory limit %d: the runtime needs room outside the heap", gomem, limit)
		}
	})

	t.Run("service account token", func(t *testing.T) {
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Error("the pod mounts a service account token: set automountServiceAccountToken: false")
		}
		if pod.ServiceAccountName != "" {
			var sa struct {
				Automount *bool `yaml:"automountServiceAccountToken"`
			}
			find(t, objs, "ServiceAccount", pod.ServiceAccountName).decode(t, &sa)
			if sa.Automount == nil || *sa.Automount {
				t.Errorf("ServiceAccount %s: automountServiceAccountToken is not false", pod.ServiceAccountName)
			}
		}
		if u := pod.SecurityContext.RunAsUser; u == nil || *u != 65532 {
			t.Error("the pod does not run as 65532, the image's user")
		}
	})

	t.Run("secrets", func(t *testing.T) {
		// Usernames as variables; passwords as files (TestEveryOverlay).
		for _, name := range []string{"KSAGA_KAFKA_SASL_USERNAME", "KSAGA_REDIS_USERNAME"} {
			e := env[name]
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != "ksaga-credentials" ||
				e.ValueFrom.SecretKeyRef.Optional == nil || !*e.ValueFrom.SecretKeyRef.Optional {
				t.Errorf("%s does not come from the optional Secret ksaga-credentials", name)
			}
		}
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			if m.ReadOnly {
				mounts[m.MountPath] = m.Name
			}
		}
		for _, path := range []string{"/etc/ksaga/kafka-tls", "/etc/ksaga/redis-tls", "/etc/ksaga/credentials"} {
			name, ok := mounts[path]
			i := slices.IndexFunc(pod.Volumes, func(v volume) bool { return v.Name == name })
			if !ok || i < 0 || pod.Volumes[i].Secret == nil || pod.Volumes[i].Secret.Optional == nil || !*pod.Volumes[i].Secret.Optional {
				t.Errorf("%s is not an optional Secret mounted read-only", path)
			}
		}
	})

	t.Run("network policy", func(t *testing.T) {
		var np networkPolicy
		find(t, objs, "NetworkPolicy", "sagad").decode(t, &np)
		for k, v := range np.Spec.PodSelector.MatchLabels {
			if sts.Spec.Template.Metadata.Labels[k] != v {
				t.Errorf("the policy selects %s=%s, which the sagad pods do not have", k, v)
			}
		}
		if len(np.Spec.PodSelector.MatchLabels) == 0 {
			t.Error("the policy selects every pod of the namespace")
		}
		if !slices.Contains(np.Spec.PolicyTypes, "Ingress") || !slices.Contains(np.Spec.PolicyTypes, "Egress") {
			t.Errorf("policyTypes %q, want Ingress and Egress", np.Spec.PolicyTypes)
		}
		scrape := false
		for _, r := range np.Spec.Ingress {
			for _, f := range r.From {
				if f.NamespaceSelector != nil && f.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == "monitoring" &&
					slices.ContainsFunc(r.Ports, func(p netPort) bool { return fmt.Sprint(p.Port) == "metrics" || fmt.Sprint(p.Port) == "9090" }) {
					scrape = true
				}
			}
		}
		if !scrape {
			t.Error("no ingress to the metrics port from the namespace monitoring")
		}
		egress := map[string]bool{}
		for _, r := range np.Spec.Egress {
			for _, p := range r.Ports {
				egress[p.Protocol+"/"+fmt.Sprint(p.Port)] = true
			}
		}
		for _, p := range []string{"UDP/53", "TCP/53", "TCP/9092", "TCP/6379"} {
			if !egress[p] {
				t.Errorf("no egress to %s", p)
			}
		}
	})
}

// TestAPIManifests checks the HTTP API's parts of the rendered manifests
// (issue 11): the container port and KSAGA_API_ADDR agree, the tokens come
// from the optional Secret ksaga-api-tokens mounted as a directory (so that
// a changed Secret reaches the pod), authentication is not turned off, the
// Service sagad-api reaches the port, and the NetworkPolicy lets callers in.
func TestAPIManifests(t *testing.T) {
	objs := render(t, "deploy/k8s")
	var sts statefulSet
	find(t, objs, "StatefulSet", "sagad").decode(t, &sts)
	pod := sts.Spec.Template.Spec
	c := pod.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		if e.Value != nil {
			env[e.Name] = *e.Value
		}
	}
	var cm configMap
	find(t, objs, "ConfigMap", "sagad-config").decode(t, &cm)

	apiPort := 0
	for _, p := range c.Ports {
		if p.Name == "api" {
			apiPort = p.ContainerPort
		}
	}
	if want := ":" + strconv.Itoa(apiPort); apiPort == 0 || env["KSAGA_API_ADDR"] != want {
		t.Errorf("container port api %d, KSAGA_API_ADDR %q: they must agree", apiPort, env["KSAGA_API_ADDR"])
	}
	for _, k := range []string{"KSAGA_API_INSECURE_NO_AUTH"} {
		if env[k] != "" || cm.Data[k] != "" {
			t.Errorf("%s is set: the API must require tokens", k)
		}
	}
	file := env["KSAGA_API_TOKEN_FILE"]
	if file == "" {
		t.Error("KSAGA_API_TOKEN_FILE is not set in the container's env")
	} else {
		mounted := false
		for _, m := range c.VolumeMounts {
			if m.MountPath != filepath.Dir(file) {
				continue
			}
			i := slices.IndexFunc(pod.Volumes, func(v volume) bool { return v.Name == m.Name })
			mounted = m.ReadOnly && m.SubPath == "" && i >= 0 && pod.Volumes[i].Secret != nil &&
				pod.Volumes[i].Secret.SecretName == "ksaga-api-tokens" && pod.Volumes[i].Secret.Optional != nil && *pod.Volumes[i].Secret.Optional
		}
		if !mounted {
			t.Errorf("%s is not in the optional Secret ksaga-api-tokens mounted read-only as a directory (no subPath)", file)
		}
	}

	var svc service
	find(t, objs, "Service", "sagad-api").decode(t, &svc)
	reaches := false
	for _, p := range svc.Spec.Ports {
		if tp := fmt.Sprint(p.TargetPort); tp == "api" || tp == strconv.Itoa(apiPort) {
			reaches = true
		}
	}
	if !reaches {
		t.Error("the Service sagad-api does not target the api port")
	}
	for k, v := range svc.Spec.Selector {
		if sts.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("the Service sagad-api selects %s=%s, which the sagad pods do not have", k, v)
		}
	}

	var np networkPolicy
	find(t, objs, "NetworkPolicy", "sagad").decode(t, &np)
	allowed := false
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if fmt.Sprint(p.Port) == "api" || fmt.Sprint(p.Port) == strconv.Itoa(apiPort) {
				allowed = true
			}
		}
	}
	if !allowed {
		t.Error("the NetworkPolicy has no ingress rule for the api port")
	}
}

// TestOverlaysRender renders every kustomize overlay of the examples (they
// use deploy/k8s as their base): a change to the base must not break them.
func TestOverlaysRender(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join(repoRoot(t), "examples", "*", "deploy", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Skip("no examples/*/deploy overlay")
	}
	for _, k := range dirs {
		dir, _ := filepath.Rel(repoRoot(t), filepath.Dir(k))
		t.Run(dir, func(t *testing.T) {
			objs := render(t, dir)
			if !slices.ContainsFunc(objs, func(o object) bool { return o.Kind == "StatefulSet" }) {
				t.Errorf("kustomize build %s has no StatefulSet", dir)
			}
		})
	}
}

// parseQuantity parses a Kubernetes memory quantity: 512Mi, 1Gi, 536870912.
func parseQuantity(s string) (int64, error) {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * u.mult, err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// parseGoMemLimit parses GOMEMLIMIT: bytes with an optional B, KiB, MiB or
// GiB suffix.
func parseGoMemLimit(s string) (int64, error) {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * u.mult, err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// TestSeparateAPIOverlay renders deploy/overlays/separate-api: the HTTP API
// in a Deployment of its own. Its pods run sagad with the engine and the
// participants off and the API on its container port (the settings
// daemon.TestSeparateAPIConfig parses), with the tokens mounted as in the
// engine pods; the Service sagad-api selects them and not the engine pods;
// the engine pods no longer serve the API; a NetworkPolicy lets callers in.
func TestSeparateAPIOverlay(t *testing.T) {
	objs := render(t, "deploy/overlays/separate-api")
	for _, o := range objs {
		if o.Kind != "Namespace" && o.Metadata.Namespace != "ksaga" {
			t.Errorf("%s %s: namespace %q, want ksaga", o.Kind, o.Metadata.Name, o.Metadata.Namespace)
		}
	}
	var api, sts statefulSet // a Deployment's template reads the same
	find(t, objs, "Deployment", "sagad-api").decode(t, &api)
	find(t, objs, "StatefulSet", "sagad").decode(t, &sts)
	envOf := func(c container) map[string]string {
		env := map[string]string{}
		for _, e := range c.Env {
			if e.Value != nil {
				env[e.Name] = *e.Value
			}
		}
		return env
	}
	pod := api.Spec.Template.Spec
	c := pod.Containers[0]
	env := envOf(c)
	want := map[string]string{"KSAGA_REQUIRE_CONFIG": "true", "KSAGA_ENGINE": "false", "KSAGA_PARTICIPANTS": "none", "KSAGA_API_ADDR": ":8080",
		"KSAGA_API_TOKEN_FILE": "/etc/ksaga/api-tokens/tokens"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("sagad-api: %s=%q, want %q", k, env[k], v)
		}
	}
	if _, ok := env["KSAGA_TRANSACTIONAL_ID"]; ok {
		t.Error("sagad-api sets KSAGA_TRANSACTIONAL_ID: the API takes none, and replicas must not share one")
	}
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["api"] != 8080 || ports["metrics"] == 0 {
		t.Errorf("sagad-api container ports %v: want api 8080 and metrics", ports)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("sagad-api has no /readyz readiness probe")
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		i := slices.IndexFunc(pod.Volumes, func(v volume) bool { return v.Name == m.Name })
		if m.MountPath == "/etc/ksaga/api-tokens" && m.SubPath == "" && i >= 0 && pod.Volumes[i].Secret != nil {
			mounted = pod.Volumes[i].Secret.SecretName == "ksaga-api-tokens"
		}
	}
	if !mounted {
		t.Error("sagad-api does not mount the Secret ksaga-api-tokens at /etc/ksaga/api-tokens")
	}
	for _, k := range []string{"KSAGA_API_ADDR", "KSAGA_API_TOKEN_FILE"} {
		if _, ok := envOf(sts.Spec.Template.Spec.Containers[0])[k]; ok {
			t.Errorf("the engine pods still set %s", k)
		}
	}

	var svc service
	find(t, objs, "Service", "sagad-api").decode(t, &svc)
	selects := func(labels map[string]string) bool {
		for k, v := range svc.Spec.Selector {
			if labels[k] != v {
				return false
			}
		}
		return len(svc.Spec.Selector) > 0
	}
	if !selects(api.Spec.Template.Metadata.Labels) {
		t.Errorf("the Service sagad-api (selector %v) does not select the sagad-api pods", svc.Spec.Selector)
	}
	if selects(sts.Spec.Template.Metadata.Labels) {
		t.Errorf("the Service sagad-api (selector %v) still selects the engine pods", svc.Spec.Selector)
	}

	var np networkPolicy
	find(t, objs, "NetworkPolicy", "sagad-api").decode(t, &np)
	for k, v := range np.Spec.PodSelector.MatchLabels {
		if api.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("the NetworkPolicy sagad-api selects %s=%s, which the sagad-api pods do not have", k, v)
		}
	}
	allowed := false
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			allowed = allowed || fmt.Sprint(p.Port) == "api"
		}
	}
	if !allowed {
		t.Error("the NetworkPolicy sagad-api has no ingress rule for the api port")
	}
}
