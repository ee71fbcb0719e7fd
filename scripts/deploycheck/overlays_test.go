package deploycheck

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The parts of a workload (StatefulSet, Deployment), a Service, a
// ServiceMonitor and a PrometheusRule that checkOverlay reads.
type (
	workload struct {
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
			Template struct {
				Metadata struct {
					Labels map[string]string `yaml:"labels"`
				} `yaml:"metadata"`
				Spec workloadPod `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	workloadPod struct {
		podSpec                       `yaml:",inline"`
		TerminationGracePeriodSeconds *int `yaml:"terminationGracePeriodSeconds"`
		TopologySpreadConstraints     []struct {
			MaxSkew           int    `yaml:"maxSkew"`
			TopologyKey       string `yaml:"topologyKey"`
			WhenUnsatisfiable string `yaml:"whenUnsatisfiable"`
			LabelSelector     struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"labelSelector"`
		} `yaml:"topologySpreadConstraints"`
	}
	labelled struct {
		Metadata struct {
			Name   string            `yaml:"name"`
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
	}
	serviceMonitor struct {
		Spec struct {
			JobLabel string `yaml:"jobLabel"`
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
			Endpoints []struct {
				Port string `yaml:"port"`
				Path string `yaml:"path"`
			} `yaml:"endpoints"`
		} `yaml:"spec"`
	}
	prometheusRule struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `yaml:"alert"`
					Expr  string `yaml:"expr"`
				} `yaml:"rules"`
			} `yaml:"groups"`
		} `yaml:"spec"`
	}
)

// overlayDirs are the kustomize directories an operator applies: the base,
// its overlays in deploy/overlays, and the examples' overlays.
func overlayDirs(t *testing.T) []string {
	t.Helper()
	dirs := []string{"deploy/k8s"}
	for _, pattern := range []string{"deploy/overlays/*/kustomization.yaml", "examples/*/deploy/kustomization.yaml"} {
		ks, err := filepath.Glob(filepath.Join(repoRoot(t), pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			dir, _ := filepath.Rel(repoRoot(t), filepath.Dir(k))
			dirs = append(dirs, filepath.ToSlash(dir))
		}
	}
	if !slices.Contains(dirs, "deploy/overlays/separate-api") {
		t.Fatalf("overlays %q: deploy/overlays/separate-api is missing", dirs)
	}
	return dirs
}

// pinnedImage matches an image pinned by tag and digest.
var pinnedImage = regexp.MustCompile(`^([^@:]+(?::[0-9]+)?(?:/[^@:]+)*):([A-Za-z0-9_][A-Za-z0-9_.-]*)@(sha256:[0-9a-f]{64})$`)

// TestEveryOverlay renders the base and every overlay (deploy/overlays/*,
// examples/*/deploy) and checks each of their pod templates the same way
// (checkWorkload): images pinned by tag and digest, probes, scraped and
// alerted as the KsagaDown alert expects, a NetworkPolicy that admits the
// HTTP API only from the labelled namespaces, TLS, passwords as files, zone
// spread, and a shutdown that drains. One image name has one digest across
// the overlays, and tripd's is not sagad's.
func TestEveryOverlay(t *testing.T) {
	digests := map[string]map[string][]string{} // image → digest → overlays
	for _, dir := range overlayDirs(t) {
		t.Run(dir, func(t *testing.T) {
			objs := render(t, dir)
			n := 0
			for _, o := range objs {
				if o.Kind != "StatefulSet" && o.Kind != "Deployment" {
					continue
				}
				n++
				t.Run(o.Kind+"/"+o.Metadata.Name, func(t *testing.T) {
					for image, digest := range checkWorkload(t, objs, o) {
						if digests[image] == nil {
							digests[image] = map[string][]string{}
						}
						digests[image][digest] = append(digests[image][digest], dir)
					}
				})
			}
			if n == 0 {
				t.Errorf("kustomize build %s has no StatefulSet or Deployment", dir)
			}
		})
	}
	seen := map[string]string{}
	for image, ds := range digests {
		if len(ds) > 1 {
			t.Errorf("%s has several digests across the overlays: %v; make pin-image pins them all", image, ds)
		}
		for d := range ds {
			if other, ok := seen[d]; ok {
				t.Errorf("%s and %s are pinned to the same digest %s: an overlay renamed an image but kept the base's digest", image, other, d)
			}
			seen[d] = image
		}
	}
}

// checkWorkload checks the pod template of o, a StatefulSet or Deployment
// rendered in objs, and returns the digests of its images by name.
func checkWorkload(t *testing.T, objs []object, o object) map[string]string {
	t.Helper()
	var w workload
	o.decode(t, &w)
	pod := w.Spec.Template.Spec
	labels := w.Spec.Template.Metadata.Labels
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	env := settings(t, objs, c)
	serves := env["KSAGA_API_ADDR"] != ""
	images := map[string]string{}

	t.Run("image", func(t *testing.T) {
		m := pinnedImage.FindStringSubmatch(c.Image)
		if m == nil {
			t.Fatalf("image %q is not pinned by tag and digest (<name>:<tag>@sha256:<digest>): set both in the kustomization's images (make pin-image)", c.Image)
		}
		if m[2] != makeVersion(t) || m[2] == "latest" {
			t.Errorf("image %q: tag %q, want %q (make image's VERSION)", c.Image, m[2], makeVersion(t))
		}
		if !slices.Contains([]string{"ghcr.io/ksaga/sagad", "ghcr.io/ksaga/tripd"}, m[1]) {
			t.Errorf("image %q: not an image make image or make image-tripd builds", c.Image)
		}
		images[m[1]] = m[3]
	})

	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	metricsPort := ports["metrics"]
	isMetrics := func(port any) bool {
		return fmt.Sprint(port) == "metrics" || (metricsPort != 0 && fmt.Sprint(port) == strconv.Itoa(metricsPort))
	}

	t.Run("probes", func(t *testing.T) {
		if metricsPort == 0 || env["KSAGA_METRICS_ADDR"] != ":"+strconv.Itoa(metricsPort) {
			t.Errorf("container port metrics %d, KSAGA_METRICS_ADDR %q: they must agree", metricsPort, env["KSAGA_METRICS_ADDR"])
		}
		for name, tc := range map[string]struct {
			p    *probe
			path string
		}{"startupProbe": {c.StartupProbe, "/healthz"}, "livenessProbe": {c.LivenessProbe, "/healthz"}, "readinessProbe": {c.ReadinessProbe, "/readyz"}} {
			switch {
			case tc.p == nil || tc.p.HTTPGet == nil:
				t.Errorf("no %s (httpGet)", name)
			case tc.p.HTTPGet.Path != tc.path || !isMetrics(tc.p.HTTPGet.Port):
				t.Errorf("%s on %s port %v, want %s on the metrics port", name, tc.p.HTTPGet.Path, tc.p.HTTPGet.Port, tc.path)
			}
		}
	})

	t.Run("scraped and alerted", func(t *testing.T) {
		job := alertJob(t, objs)
		var sm serviceMonitor
		find(t, objs, "ServiceMonitor", "sagad").decode(t, &sm)
		if len(sm.Spec.Endpoints) == 0 {
			t.Fatal("the ServiceMonitor has no endpoint")
		}
		var scrapedBy []string
		for _, so := range objs {
			if so.Kind != "Service" {
				continue
			}
			var svc service
			so.decode(t, &svc)
			if !selects(svc.Spec.Selector, labels) || !selects(sm.Spec.Selector.MatchLabels, so.Metadata.Labels) ||
				so.Metadata.Labels[sm.Spec.JobLabel] != job {
				continue
			}
			for _, p := range svc.Spec.Ports {
				if p.Name == sm.Spec.Endpoints[0].Port && isMetrics(p.TargetPort) {
					scrapedBy = append(scrapedBy, so.Metadata.Name)
				}
			}
		}
		if len(scrapedBy) == 0 {
			t.Errorf("no Service that the ServiceMonitor scrapes (labels %v, job from %s = %q, as KsagaDown's up{job=%q} wants) selects these pods (%v) on their metrics port",
				sm.Spec.Selector.MatchLabels, sm.Spec.JobLabel, job, job, labels)
		}
	})

	t.Run("network policy", func(t *testing.T) {
		var ingressTypes, egressTypes, scrape, api bool
		egress := map[string]bool{}
		n := 0
		for _, po := range objs {
			if po.Kind != "NetworkPolicy" {
				continue
			}
			var np networkPolicy
			po.decode(t, &np)
			if !selects(np.Spec.PodSelector.MatchLabels, labels) {
				continue
			}
			n++
			ingressTypes = ingressTypes || slices.Contains(np.Spec.PolicyTypes, "Ingress")
			egressTypes = egressTypes || slices.Contains(np.Spec.PolicyTypes, "Egress")
			for _, r := range np.Spec.Ingress {
				toAPI := slices.ContainsFunc(r.Ports, func(p netPort) bool {
					return fmt.Sprint(p.Port) == "api" || (ports["api"] != 0 && fmt.Sprint(p.Port) == strconv.Itoa(ports["api"]))
				})
				toMetrics := slices.ContainsFunc(r.Ports, func(p netPort) bool { return isMetrics(p.Port) })
				for _, f := range r.From {
					if toMetrics && f.NamespaceSelector != nil && f.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == "monitoring" {
						scrape = true
					}
				}
				switch {
				case toAPI && !serves:
					t.Errorf("NetworkPolicy %s admits the api port, which these pods do not serve", po.Metadata.Name)
				case toAPI && len(r.From) == 0:
					t.Errorf("NetworkPolicy %s admits the api port from anywhere", po.Metadata.Name)
				case toAPI:
					api = true
					for _, f := range r.From {
						if f.NamespaceSelector == nil || f.NamespaceSelector.MatchLabels["ksaga.io/api-client"] != "true" || len(f.NamespaceSelector.MatchLabels) != 1 {
							from := "pods of its own namespace"
							if f.NamespaceSelector != nil {
								from = fmt.Sprintf("the namespaces labelled %v (none: all)", f.NamespaceSelector.MatchLabels)
							}
							t.Errorf("NetworkPolicy %s admits the api port from %s: want only namespaces labelled ksaga.io/api-client=true", po.Metadata.Name, from)
						}
					}
				}
			}
			for _, r := range np.Spec.Egress {
				for _, p := range r.Ports {
					egress[p.Protocol+"/"+fmt.Sprint(p.Port)] = true
				}
			}
		}
		switch {
		case n == 0:
			t.Fatalf("no NetworkPolicy selects these pods (%v)", labels)
		case !ingressTypes || !egressTypes:
			t.Errorf("their NetworkPolicies leave ingress (%v) or egress (%v) open: want both policyTypes", ingressTypes, egressTypes)
		case !scrape:
			t.Error("no ingress to the metrics port from the namespace monitoring")
		case serves && !api:
			t.Error("no ingress to the api port")
		}
		for _, p := range []string{"UDP/53", "TCP/53", "TCP/9092", "TCP/6379", "TCP/4317", "TCP/4318"} {
			if !egress[p] {
				t.Errorf("no egress to %s (DNS, Kafka, Redis, OTLP)", p)
			}
		}
	})

	// mountedSecret returns the Secret volume mounted read-only, as a
	// directory, at dir.
	mountedSecret := func(dir string) *volume {
		for _, m := range c.VolumeMounts {
			if m.MountPath != dir || !m.ReadOnly || m.SubPath != "" {
				continue
			}
			if i := slices.IndexFunc(pod.Volumes, func(v volume) bool { return v.Name == m.Name }); i >= 0 && pod.Volumes[i].Secret != nil {
				return &pod.Volumes[i]
			}
		}
		return nil
	}

	t.Run("API over TLS", func(t *testing.T) {
		if !serves {
			for _, k := range []string{"KSAGA_API_TLS_CERT", "KSAGA_API_TLS_KEY", "KSAGA_API_TOKEN_FILE"} {
				if env[k] != "" {
					t.Errorf("%s is set without KSAGA_API_ADDR: sagad refuses to start", k)
				}
			}
			return
		}
		cert, key := env["KSAGA_API_TLS_CERT"], env["KSAGA_API_TLS_KEY"]
		if cert == "" || key == "" {
			t.Fatalf("the API is served without TLS: KSAGA_API_TLS_CERT %q, KSAGA_API_TLS_KEY %q", cert, key)
		}
		if filepath.Base(cert) != "tls.crt" || filepath.Base(key) != "tls.key" || filepath.Dir(cert) != filepath.Dir(key) {
			t.Errorf("KSAGA_API_TLS_CERT %q, KSAGA_API_TLS_KEY %q: want tls.crt and tls.key of one kubernetes.io/tls Secret", cert, key)
		}
		v := mountedSecret(filepath.Dir(cert))
		switch {
		case v == nil:
			t.Errorf("%s is not a Secret mounted read-only as a directory (no subPath: a renewed certificate must reach the pod)", filepath.Dir(cert))
		case v.Secret.SecretName != "ksaga-api-tls":
			t.Errorf("the certificate is the Secret %s, want ksaga-api-tls", v.Secret.SecretName)
		case v.Secret.Optional != nil && *v.Secret.Optional:
			t.Error("the Secret ksaga-api-tls is optional: a pod without it would fail at start instead of waiting for it")
		}
	})

	t.Run("console over TLS", func(t *testing.T) {
		addr := env["KSAGA_CONSOLE_ADDR"]
		if addr == "" {
			return // off
		}
		// The console takes the API's certificate and tokens when it has
		// none of its own.
		cert := cmp.Or(env["KSAGA_CONSOLE_TLS_CERT"], env["KSAGA_API_TLS_CERT"])
		tokens := cmp.Or(env["KSAGA_CONSOLE_TOKEN_FILE"], env["KSAGA_API_TOKEN_FILE"])
		if cert == "" || tokens == "" {
			t.Fatalf("the console is served without TLS (%q) or tokens (%q)", cert, tokens)
		}
		if port := ports["console"]; port == 0 || addr != ":"+strconv.Itoa(port) {
			t.Errorf("container port console %d, KSAGA_CONSOLE_ADDR %q: they must agree", port, addr)
		}
		admitted := false
		for _, po := range objs {
			if po.Kind != "NetworkPolicy" {
				continue
			}
			var np networkPolicy
			po.decode(t, &np)
			if !selects(np.Spec.PodSelector.MatchLabels, labels) {
				continue
			}
			for _, r := range np.Spec.Ingress {
				if !slices.ContainsFunc(r.Ports, func(p netPort) bool { return fmt.Sprint(p.Port) == "console" }) {
					continue
				}
				admitted = true
				for _, f := range r.From {
					if f.NamespaceSelector == nil || f.NamespaceSelector.MatchLabels["ksaga.io/console-client"] != "true" {
						t.Errorf("NetworkPolicy %s admits the console port from %v: want only namespaces labelled ksaga.io/console-client=true", po.Metadata.Name, f.NamespaceSelector)
					}
				}
				if len(r.From) == 0 {
					t.Errorf("NetworkPolicy %s admits the console port from anywhere", po.Metadata.Name)
				}
			}
		}
		if !admitted {
			t.Error("no ingress to the console port")
		}
	})

	t.Run("passwords as files", func(t *testing.T) {
		for _, e := range c.Env {
			if strings.Contains(e.Name, "PASSWORD") && !strings.HasSuffix(e.Name, "_FILE") {
				t.Errorf("%s is an environment variable: give passwords as files (*_PASSWORD_FILE)", e.Name)
			}
		}
		for k, v := range env {
			if strings.Contains(k, "PASSWORD") && !strings.HasSuffix(k, "_FILE") && v != "" {
				t.Errorf("%s is set in the environment: give passwords as files (*_PASSWORD_FILE)", k)
			}
			if strings.HasSuffix(k, "_PASSWORD_FILE") && v != "" && mountedSecret(filepath.Dir(v)) == nil {
				t.Errorf("%s=%s is not in a Secret mounted read-only", k, v)
			}
		}
		v := mountedSecret("/etc/ksaga/credentials")
		if v == nil || v.Secret.SecretName != "ksaga-credentials" || v.Secret.Optional == nil || !*v.Secret.Optional {
			t.Error("the optional Secret ksaga-credentials is not mounted read-only at /etc/ksaga/credentials")
		}
	})

	t.Run("zone spread", func(t *testing.T) {
		for _, c := range pod.TopologySpreadConstraints {
			if c.TopologyKey == "topology.kubernetes.io/zone" && c.MaxSkew >= 1 && c.WhenUnsatisfiable != "" && selects(c.LabelSelector.MatchLabels, labels) {
				return
			}
		}
		t.Errorf("no topologySpreadConstraint on topology.kubernetes.io/zone selects these pods (%v)", labels)
	})

	t.Run("shutdown", func(t *testing.T) {
		grace := 30
		if pod.TerminationGracePeriodSeconds != nil {
			grace = *pod.TerminationGracePeriodSeconds
		}
		if !serves {
			if env["KSAGA_SHUTDOWN_DRAIN"] != "" {
				t.Error("KSAGA_SHUTDOWN_DRAIN is set without KSAGA_API_ADDR: sagad refuses to start")
			}
			return
		}
		drain := 15 * time.Second // daemon.DefaultShutdownDrain
		if s := env["KSAGA_SHUTDOWN_DRAIN"]; s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				t.Fatalf("KSAGA_SHUTDOWN_DRAIN %q: %v", s, err)
			}
			drain = d
		}
		if r := c.ReadinessProbe; r != nil {
			period, failures := 10, 3 // Kubernetes' defaults
			if r.PeriodSeconds != 0 {
				period = r.PeriodSeconds
			}
			if r.FailureThreshold != 0 {
				failures = r.FailureThreshold
			}
			if unready := time.Duration(period*failures) * time.Second; drain < unready {
				t.Errorf("drain %v is shorter than the readiness probe's %ds × %d: the pod may stop accepting while still ready", drain, period, failures)
			}
		}
		// The drain, then the HTTP servers' shutdown (5s) and the Kafka
		// clients' close.
		if min := drain + 15*time.Second; time.Duration(grace)*time.Second < min {
			t.Errorf("terminationGracePeriodSeconds %d is below the drain %v + 15s", grace, drain)
		}
	})
	return images
}

// settings returns the KSAGA_* and other settings of container c: the
// ConfigMaps of its envFrom, then its env values (which win).
func settings(t *testing.T, objs []object, c container) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			continue
		}
		var cm configMap
		find(t, objs, "ConfigMap", ef.ConfigMapRef.Name).decode(t, &cm)
		for k, v := range cm.Data {
			env[k] = v
		}
	}
	for _, e := range c.Env {
		if e.Value != nil {
			env[e.Name] = *e.Value
		}
	}
	return env
}

// selects reports whether a non-empty label selector selects labels.
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

// alertJob returns the job that the KsagaDown alert watches (up{job="…"}).
func alertJob(t *testing.T, objs []object) string {
	t.Helper()
	for _, o := range objs {
		if o.Kind != "PrometheusRule" {
			continue
		}
		var pr prometheusRule
		o.decode(t, &pr)
		for _, g := range pr.Spec.Groups {
			for _, r := range g.Rules {
				if r.Alert != "KsagaDown" {
					continue
				}
				if m := regexp.MustCompile(`up\{job="([^"]+)"\}`).FindStringSubmatch(r.Expr); m != nil {
					return m[1]
				}
				t.Fatalf("KsagaDown's expr %q names no up{job=...}", r.Expr)
			}
		}
	}
	t.Fatal("no PrometheusRule with the alert KsagaDown in the rendered manifests")
	return ""
}

// TestAPICertificateComponent renders the base with the cert-manager
// component: its Certificate writes the Secret the pods mount for the
// API's TLS, for the names of the Service sagad-api.
func TestAPICertificateComponent(t *testing.T) {
	root := repoRoot(t)
	dir := t.TempDir()
	rel := func(path string) string {
		r, err := filepath.Rel(dir, filepath.Join(root, path))
		if err != nil {
			t.Fatal(err)
		}
		return filepath.ToSlash(r) // kustomize takes no absolute root
	}
	k := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: ksaga\nresources:\n  - %s\ncomponents:\n  - %s\n",
		rel("deploy/k8s"), rel("deploy/components/api-certificate"))
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	objs := render(t, dir)
	var cert struct {
		Spec struct {
			SecretName string   `yaml:"secretName"`
			DNSNames   []string `yaml:"dnsNames"`
			IssuerRef  struct {
				Name, Kind string
			} `yaml:"issuerRef"`
		} `yaml:"spec"`
	}
	co := find(t, objs, "Certificate", "sagad-api")
	co.decode(t, &cert)
	var sts statefulSet
	find(t, objs, "StatefulSet", "sagad").decode(t, &sts)
	mounted := slices.ContainsFunc(sts.Spec.Template.Spec.Volumes, func(v volume) bool {
		return v.Secret != nil && v.Secret.SecretName == cert.Spec.SecretName
	})
	if cert.Spec.SecretName != "ksaga-api-tls" || !mounted {
		t.Errorf("the Certificate writes the Secret %q, which the sagad pods do not mount (want ksaga-api-tls)", cert.Spec.SecretName)
	}
	want := "sagad-api." + co.Metadata.Namespace + ".svc"
	if !slices.Contains(cert.Spec.DNSNames, want) {
		t.Errorf("the Certificate's names %q lack %s", cert.Spec.DNSNames, want)
	}
	if cert.Spec.IssuerRef.Name == "" || cert.Spec.IssuerRef.Kind == "" {
		t.Error("the Certificate names no issuer")
	}
}

// TestPasswordFilesDocumented checks that configmap.yaml shows how to turn
// on the password files that the pods mount.
func TestPasswordFilesDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "k8s", "configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		`KSAGA_KAFKA_SASL_PASSWORD_FILE: "/etc/ksaga/credentials/KSAGA_KAFKA_SASL_PASSWORD"`,
		`KSAGA_REDIS_PASSWORD_FILE: "/etc/ksaga/credentials/KSAGA_REDIS_PASSWORD"`,
	} {
		if !strings.Contains(string(b), line) {
			t.Errorf("configmap.yaml does not show %s", line)
		}
	}
}

// TestPinImage runs scripts/pin-image.sh on a copy of the manifests with
// made-up digests for sagad and tripd: every overlay then renders them,
// with VERSION as the tag, and the kustomizations keep their comments.
func TestPinImage(t *testing.T) {
	root, dir := repoRoot(t), t.TempDir()
	for _, d := range []string{"deploy", filepath.Join("examples", "trip", "deploy")} {
		if err := os.CopyFS(filepath.Join(dir, d), os.DirFS(filepath.Join(root, d))); err != nil {
			t.Fatal(err)
		}
	}
	digests := map[string]string{"image": "sha256:" + strings.Repeat("a1", 32), "image-tripd": "sha256:" + strings.Repeat("b2", 32)}
	for sub, d := range digests {
		if err := os.MkdirAll(filepath.Join(dir, "build", sub), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "build", sub, "digest"), []byte(d+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(root, "scripts", "pin-image.sh"))
	cmd.Env = append(os.Environ(), "KSAGA_ROOT="+dir, "VERSION=9.8.7")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pin-image.sh: %v\n%s", err, out)
	}
	want := map[string]string{"deploy/k8s": "ghcr.io/ksaga/sagad:9.8.7@" + digests["image"],
		"deploy/overlays/separate-api": "ghcr.io/ksaga/sagad:9.8.7@" + digests["image"],
		"examples/trip/deploy":         "ghcr.io/ksaga/tripd:9.8.7@" + digests["image-tripd"]}
	for d, image := range want {
		for _, o := range render(t, filepath.Join(dir, d)) {
			if o.Kind != "StatefulSet" && o.Kind != "Deployment" {
				continue
			}
			var w workload
			o.decode(t, &w)
			if got := w.Spec.Template.Spec.Containers[0].Image; got != image {
				t.Errorf("%s %s %s: image %q, want %q", d, o.Kind, o.Metadata.Name, got, image)
			}
		}
		before, err1 := os.ReadFile(filepath.Join(root, d, "kustomization.yaml"))
		after, err2 := os.ReadFile(filepath.Join(dir, d, "kustomization.yaml"))
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		comments := func(b []byte) (n int) {
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(strings.TrimSpace(l), "#") {
					n++
				}
			}
			return n
		}
		if comments(before) != comments(after) || strings.Count(string(before), "\n") != strings.Count(string(after), "\n") {
			t.Errorf("%s/kustomization.yaml: pin-image.sh changed more than the tag and digest lines", d)
		}
	}
}
