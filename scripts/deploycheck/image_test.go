package deploycheck

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// imageConfig is the part of an OCI image config the checks read.
type imageConfig struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Config       struct {
		User       string   `json:"User"`
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
		Env        []string `json:"Env"`
		WorkingDir string   `json:"WorkingDir"`
	} `json:"config"`
}

// TestImage checks the image make image wrote to build/image/oci the way a
// registry and a container runtime would see it: pushed to crane's
// in-memory registry, its config read with crane config, its filesystem
// exported with crane export, and its entrypoint started from that
// filesystem with chroot as the image's user.
func TestImage(t *testing.T) {
	layout := filepath.Join(repoRoot(t), "build", "image", "oci")
	if _, err := os.Stat(filepath.Join(layout, "index.json")); err != nil {
		skipOrFail(t, "no image in %s: run make image first (make deploy-check does)", layout)
	}
	crane := tool(t, "crane")
	ref := startRegistry(t, crane) + "/ksaga/sagad:check"
	runTool(t, crane, "push", layout, ref)

	var cfg imageConfig
	raw := runTool(t, crane, "config", ref)
	t.Logf("crane config: %s", raw)
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("image config: %v", err)
	}
	if cfg.OS != "linux" {
		t.Errorf("os = %q, want linux", cfg.OS)
	}
	if cfg.Config.User != "65532:65532" {
		t.Errorf("User = %q, want 65532:65532 (the manifests' runAsUser)", cfg.Config.User)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/sagad"}) || len(cfg.Config.Cmd) != 0 {
		t.Errorf("Entrypoint = %q, Cmd = %q; want [/sagad] and none", cfg.Config.Entrypoint, cfg.Config.Cmd)
	}
	for _, kv := range []string{"KSAGA_REQUIRE_CONFIG=true", "KSAGA_LOG_FORMAT=json"} {
		if !slices.Contains(cfg.Config.Env, kv) {
			t.Errorf("Env = %q, want %s in it", cfg.Config.Env, kv)
		}
	}

	rootfs := filepath.Join(t.TempDir(), "rootfs")
	files := exportImage(t, crane, ref, rootfs)
	want := []string{"etc/", "etc/group", "etc/nsswitch.conf", "etc/passwd", "etc/ssl/", "etc/ssl/certs/",
		"etc/ssl/certs/ca-certificates.crt", "sagad", "tmp/"}
	if !slices.Equal(files, want) {
		t.Errorf("image files = %q, want %q", files, want)
	}
	checkFiles(t, rootfs)
	checkProductionBinary(t, filepath.Join(rootfs, "sagad"))
	if t.Failed() {
		return
	}
	if cfg.Architecture != runtime.GOARCH {
		t.Skipf("the image is %s, this machine %s: not starting it", cfg.Architecture, runtime.GOARCH)
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "starting the image's entrypoint with chroot needs root")
	}
	// After chroot, the user needs to search the new root.
	if err := os.Chmod(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}

	// -help: the binary starts as 65532 from the image's filesystem alone.
	stdout, stderr, code := runImage(t, rootfs, cfg, "-help")
	if code != 0 || !strings.Contains(stdout, "kafka-brokers") {
		t.Fatalf("sagad -help in the image: exit %d, want 0 and the flags\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if strings.Contains(stdout, "chaos-faults") {
		t.Errorf("sagad -help in the image lists --chaos-faults: the image must be the production build")
	}
	// With the image's environment alone (KSAGA_REQUIRE_CONFIG=true) and no
	// Kafka or Redis setting, sagad must refuse to start the embedded demo.
	// The flag comes with the runtime refactor: check it once -help lists it.
	if !strings.Contains(stdout+stderr, "require-config") {
		t.Log("sagad -help lists no --require-config yet: the fail-fast start is not checked")
		return
	}
	stdout, stderr, code = runImage(t, rootfs, cfg)
	if code != 2 || !strings.Contains(strings.ToLower(stderr), "kafka") {
		t.Fatalf("sagad in the image with no Kafka or Redis setting: exit %d, want 2 and a message naming Kafka\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	t.Logf("fail-fast start: exit 2: %s", strings.TrimSpace(stderr))

	// Even told not to require the settings, the production build has no
	// embedded demo to fall back to.
	noRequire := cfg
	noRequire.Config.Env = append(slices.Clone(cfg.Config.Env), "KSAGA_REQUIRE_CONFIG=false")
	stdout, stderr, code = runImage(t, rootfs, noRequire, "--metrics-addr", "")
	if code != 2 || !strings.Contains(stderr, "production build") {
		t.Fatalf("sagad in the image with KSAGA_REQUIRE_CONFIG=false and no settings: exit %d, want 2 and a message naming the production build\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// testModules are the modules of test code that the production binary
// must not hold: the in-process Kafka and Redis of the embedded demo, and
// the Lua interpreter of the latter.
var testModules = []string{
	"github.com/twmb/franz-go/pkg/kfake",
	"github.com/alicebob/miniredis/v2",
	"github.com/yuin/gopher-lua",
}

// checkProductionBinary checks that bin is sagad's production build (go
// build -tags ksaga_production, as scripts/image.sh makes it): its build
// information (what go version -m prints) names the tag and none of
// testModules, and it holds neither the chaos suite's flag nor its keys.
func checkProductionBinary(t *testing.T, bin string) {
	t.Helper()
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Errorf("/sagad has no Go build information: %v", err)
		return
	}
	tags := ""
	for _, s := range info.Settings {
		if s.Key == "-tags" {
			tags = s.Value
		}
	}
	if !slices.Contains(strings.Split(tags, ","), "ksaga_production") {
		t.Errorf("/sagad was built with tags %q, want ksaga_production (the production build)", tags)
	}
	for _, d := range info.Deps {
		if slices.Contains(testModules, d.Path) {
			t.Errorf("/sagad holds module %s %s: test code, which the production build leaves out", d.Path, d.Version)
		}
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"chaos-faults", "ksaga:chaos:fault"} {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("/sagad holds %q: the chaos suite's fault hooks are test code", s)
		}
	}
	t.Logf("/sagad: %d bytes, %d modules, tags %q", len(b), len(info.Deps), tags)
}

// startRegistry starts crane's in-memory registry on a free port of the
// loopback for the test and returns its host:port.
func startRegistry(t *testing.T, crane string) string {
	t.Helper()
	cmd := exec.Command(crane, "registry", "serve", "--address", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	port := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`serving on port (\d+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				port <- m[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, stderr) // its request log
	}()
	select {
	case p := <-port:
		return "127.0.0.1:" + p
	case <-time.After(20 * time.Second):
		t.Fatal("crane registry serve did not say its port within 20s")
		return ""
	}
}

// runTool runs a tool and returns its stdout; it fails the test with
// stderr when the tool fails.
func runTool(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// exportImage extracts the image's filesystem (crane export) into dir and
// returns its entries, sorted, directories with a trailing slash.
func exportImage(t *testing.T, crane, ref, dir string) []string {
	t.Helper()
	cmd := exec.Command(crane, "export", ref, "-")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	files, xerr := extract(tar.NewReader(out), dir)
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("crane export: %v\n%s", err, stderr.String())
	}
	if xerr != nil {
		t.Fatalf("crane export: %v", xerr)
	}
	sort.Strings(files)
	return files
}

func extract(tr *tar.Reader, dir string) ([]string, error) {
	var files []string
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(filepath.Clean("/"+h.Name), "/")
		if name == "" {
			continue
		}
		path := filepath.Join(dir, name)
		mode := h.FileInfo().Mode()
		switch h.Typeflag {
		case tar.TypeDir:
			files = append(files, name+"/")
			if err := os.MkdirAll(path, 0o755); err != nil {
				return nil, err
			}
		case tar.TypeReg:
			files = append(files, name)
			f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%s: unexpected entry type %q in the image", h.Name, h.Typeflag)
		}
		// Not umask's: the layer's own modes (the sticky bit of /tmp too).
		if err := os.Chmod(path, mode&(os.ModePerm|os.ModeSticky)); err != nil {
			return nil, err
		}
		if h.Uid != 0 || h.Gid != 0 {
			return nil, fmt.Errorf("%s: owned by %d:%d, want root (0:0)", h.Name, h.Uid, h.Gid)
		}
	}
}

// checkFiles checks the image's files: a static sagad, the nonroot user
// and group, a CA bundle that parses, a writable /tmp.
func checkFiles(t *testing.T, rootfs string) {
	t.Helper()
	bin := filepath.Join(rootfs, "sagad")
	if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("/sagad: %v, want mode 0755", fi.Mode())
	}
	if f, err := elf.Open(bin); err != nil {
		t.Errorf("/sagad is not an ELF binary: %v", err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("/sagad is dynamically linked (PT_INTERP): the image has no libc; build it with CGO_ENABLED=0")
			}
		}
		f.Close()
	}
	for file, prefix := range map[string]string{
		"etc/passwd":        "nonroot:x:65532:65532:",
		"etc/group":         "nonroot:x:65532:",
		"etc/nsswitch.conf": "hosts: files dns",
	} {
		b, err := os.ReadFile(filepath.Join(rootfs, file))
		if err != nil || !slices.ContainsFunc(strings.Split(string(b), "\n"), func(l string) bool { return strings.HasPrefix(l, prefix) }) {
			t.Errorf("/%s: want a line starting %q, have %q (%v)", file, prefix, b, err)
		}
	}
	pem, err := os.ReadFile(filepath.Join(rootfs, "etc", "ssl", "certs", "ca-certificates.crt"))
	if err != nil || !x509.NewCertPool().AppendCertsFromPEM(pem) {
		t.Errorf("/etc/ssl/certs/ca-certificates.crt holds no CA certificate (%v)", err)
	}
	if fi, err := os.Stat(filepath.Join(rootfs, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("/tmp: %v, want 1777", fi.Mode())
	}
}

// runImage starts the image's entrypoint with args from rootfs as the
// image's user, with the image's environment and nothing else (what a
// container runtime gives it), and returns its output and exit code.
func runImage(t *testing.T, rootfs string, cfg imageConfig, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	argv := append([]string{"--userspec=" + cfg.Config.User, rootfs}, cfg.Config.Entrypoint...)
	cmd := exec.CommandContext(ctx, "chroot", append(argv, args...)...)
	cmd.Env = cfg.Config.Env
	cmd.Dir = "/"
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && ctx.Err() == nil:
		code = exit.ExitCode()
	default:
		t.Fatalf("chroot %s: %v\n%s", strings.Join(append(argv, args...), " "), err, errOut.String())
	}
	return out.String(), errOut.String(), code
}
