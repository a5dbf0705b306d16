//! sealos Clusterfiles as they are (issue 23, in progress): image names as sealos users
//! write them (a registry host and port in the name, no tag meaning `:latest`), and SSH
//! credentials that never leave the apply call.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use std::process::Command;

/// Files under `dir` holding `needle`, as `grep -rl` lists them.
fn files_with(dir: &std::path::Path, needle: &str) -> String {
    let out = Command::new("grep")
        .args(["-rla", needle])
        .arg(dir)
        .output()
        .unwrap();
    stdout(&out)
}

/// A Clusterfile with a root password under `spec.ssh` and a key under `hosts[].ssh`, as
/// sealos users keep them: applied to a real agent, the credentials are in no stored byte
/// of the controller and reach no host (not the hook's `$BERTH_CLUSTERFILE`, not the
/// cluster's files or cached context on the host).
#[test]
fn ssh_credentials_are_never_stored_or_sent_to_hosts() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["s0"]);
    let b = hook_bundle(
        ctl.dir.path(),
        "sshcheck",
        &[(
            "install",
            "if grep -q \"hunter\"\"2\" \"$BERTH_CLUSTERFILE\"; then echo leaked; exit 1; fi\ngrep -q ClusterConfiguration \"$BERTH_CLUSTERFILE\"\necho clusterfile-clean",
        )],
        "",
    );
    push_dir(&ctl, &b, "sshcheck:v1");
    let cf = ctl.dir.path().join("with-ssh.yaml");
    std::fs::write(
        &cf,
        "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: sshy\nspec:\n  hosts:\n  - ips: [s0]\n    roles: [master, amd64]\n    ssh:\n      user: root\n      pk: /root/.ssh/id_rsa\n      pkPasswd: hunter2-key-passphrase\n  image: [sshcheck:v1]\n  ssh:\n    user: root\n    passwd: hunter2-root-password\n    port: 22\nstatus: {}\n---\napiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.244.0.0/16 # kept as written\n",
    )
    .unwrap();
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("were not stored (they hold credentials)")
            || stdout(&out).contains("were not stored (they hold credentials)"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let log = stdout(&ctl.cli(&["logs", "sshy", "--host", "s0", "--step", "install"]));
    assert!(log.contains("clusterfile-clean"), "{log}");
    // Everything the controller keeps, and everything on the host.
    ctl.cli(&["get", "clusters"]);
    assert_eq!(files_with(&ctl.data_dir, "hunter2"), "");
    assert_eq!(files_with(&ctl.agent_dir("s0"), "hunter2"), "");
    let stored = std::fs::read_to_string(ctl.agent_dir("s0").join("clusters/sshy/Clusterfile"))
        .unwrap_or_default();
    assert!(
        stored.contains("podSubnet: 10.244.0.0/16 # kept as written"),
        "{stored}"
    );
    // A reset leaves nothing of the cluster on the host: its cached contexts (the
    // Clusterfile and outputs) go with its dir.
    let contexts = ctl.agent_dir("s0").join("cache/contexts");
    assert_ne!(std::fs::read_dir(&contexts).unwrap().count(), 0);
    let out = ctl.cli(&["reset", "sshy", "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(!ctl.agent_dir("s0").join("clusters/sshy").exists());
    let left: Vec<_> = std::fs::read_dir(&contexts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Images named the way sealos users name them: with a registry host and port, and
/// without a tag (`:latest`). Bundles pushed under those names are what the Clusterfile
/// resolves, and the cluster runs.
#[test]
fn image_names_with_a_registry_port_or_no_tag_resolve() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["r0"]);
    // Rootfs bundles merge into one tree: each hook gets a path of its own.
    for (dir, word, tag) in [
        ("stub-a", "a", "sealos.hub:5000/labring/stub:v1"),
        ("stub-b", "b", "labring/plain"),
    ] {
        let d = hook_bundle(
            ctl.dir.path(),
            dir,
            &[("install", &format!("echo {word}-ran"))],
            "",
        );
        move_hook(&d, "install", &format!("scripts/install-{word}.sh"));
        push_dir(&ctl, &d, tag);
    }
    let out = ctl.cli(&["bundle", "inspect", "labring/plain:latest", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cf = ctl.clusterfile(
        "refs",
        &["r0"],
        &[],
        &["sealos.hub:5000/labring/stub:v1", "labring/plain"],
        &[],
    );
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let log = stdout(&ctl.cli(&["logs", "refs", "--host", "r0", "--step", "install"]));
    assert!(log.contains("a-ran") && log.contains("b-ran"), "{log}");
}

/// A bundle of `kind` (`rootfs` or `app`) named `name`, with `files` (path → content) and
/// bundle.yaml lines `extra`.
fn bundle_with(
    dir: &std::path::Path,
    name: &str,
    kind: &str,
    files: &[(&str, &str)],
    extra: &str,
) -> std::path::PathBuf {
    let d = dir.join(name.replace('/', "_"));
    for (p, content) in files {
        let f = d.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, content).unwrap();
        if p.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    std::fs::write(
        d.join("bundle.yaml"),
        format!("apiVersion: berth.dev/v1\nkind: Bundle\nname: {name}\nversion: v1\ntype: {kind}\n{extra}"),
    )
    .unwrap();
    d
}

/// The shapes of sealos's "custom configuration" examples: a Config without `match`
/// merging into a chart's values.yaml that only the app image carries (the rootfs lacks
/// it: skipped there), a Config without `strategy` writing a whole file, and a kube-proxy
/// document repeating `clusterCIDR` (kept as written; kubeadm reads the last). The
/// cluster runs, and the app sees the merged values.
#[test]
fn sealos_custom_configuration_shapes_run_as_written() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["c0"]);
    let k8s = bundle_with(
        ctl.dir.path(),
        "labring/kubernetes",
        "rootfs",
        &[
            ("etc/kubelet-extra.conf", "old\n"),
            ("scripts/k8s-install.sh", "#!/bin/sh\necho \"extra=$(cat etc/kubelet-extra.conf)\"\ngrep -c clusterCIDR \"$BERTH_CLUSTERFILE\"\n"),
        ],
        "hooks:\n  install: scripts/k8s-install.sh\n",
    );
    push_dir(&ctl, &k8s, "labring/kubernetes:v1.27.7");
    let calico = bundle_with(
        ctl.dir.path(),
        "labring/calico",
        "app",
        &[
            (
                "charts/calico/values.yaml",
                "installation:\n  cni: {type: Calico}\n  mtu: 1440\n",
            ),
            (
                "show.sh",
                "#!/bin/sh\necho \"values: $(tr '\\n' ' ' < charts/calico/values.yaml)\"\n",
            ),
        ],
        "cmd: [\"sh\", \"show.sh\"]\n",
    );
    push_dir(&ctl, &calico, "labring/calico:v3.24.1");
    let cf = ctl.dir.path().join("custom.yaml");
    std::fs::write(
        &cf,
        "apiVersion: apps.sealos.io/v1beta1
kind: Cluster
metadata:
  name: custom
spec:
  hosts:
  - ips: [c0]
    roles: [master, amd64]
  image:
  - labring/kubernetes:v1.27.7
  - labring/calico:v3.24.1
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
clusterCIDR: 100.64.0.0/10
clusterCIDR: 100.64.0.0/10,fd85:ee78:d8a6:8607::1:0000/112
---
apiVersion: apps.sealos.io/v1beta1
kind: Config
metadata:
  name: calico
spec:
  path: charts/calico/values.yaml
  strategy: merge
  data: |
    installation:
      calicoNetwork:
        ipPools:
        - blockSize: 26
          cidr: 100.64.0.0/10
---
apiVersion: apps.sealos.io/v1beta1
kind: Config
metadata:
  name: kubelet-extra
spec:
  path: etc/kubelet-extra.conf
  data: |
    --max-pods=200
",
    )
    .unwrap();
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let log = stdout(&ctl.cli(&["logs", "custom", "--host", "c0", "--step", "install"]));
    assert!(
        log.contains("extra=--max-pods=200"),
        "the whole file, overridden: {log}"
    );
    assert!(
        log.contains("\n2\n"),
        "both clusterCIDR lines reach hooks as written: {log}"
    );
    let log = stdout(&ctl.cli(&["logs", "custom", "--host", "c0", "--step", "apps"]));
    assert!(
        log.contains("calicoNetwork:")
            && log.contains("cidr: 100.64.0.0/10")
            && log.contains("mtu: 1440"),
        "merged into the app's values: {log}"
    );
    let log = stdout(&ctl.cli(&["logs", "custom", "--host", "c0", "--step", "distribute"]));
    assert!(
        log.contains("Config charts/calico/values.yaml (merge) skipped"),
        "{log}"
    );
}

/// Stops the local agent `berth apply` started under a controller's data dir.
struct LocalAgent(std::path::PathBuf);
impl Drop for LocalAgent {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("local-agent/agent.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// A Clusterfile with no hosts, then one whose only host is 127.0.0.1: this machine, as in
/// sealos — `berth apply` enrolls and starts the local agent (as `berth run --single`
/// does) and the cluster runs on it.
#[test]
fn a_clusterfile_without_hosts_or_with_only_loopback_runs_on_this_machine() {
    let ctl = Controller::start(&[]);
    let _local = LocalAgent(ctl.data_dir.clone());
    let b = hook_bundle(ctl.dir.path(), "here", &[("install", "echo ran-here")], "");
    push_dir(&ctl, &b, "labring/here:v1");
    for (name, hosts) in [
        ("nohosts", ""),
        (
            "loopback",
            "  hosts:\n  - ips: [127.0.0.1:22]\n    roles: [master, amd64]\n",
        ),
    ] {
        let cf = ctl.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &cf,
            format!("apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n{hosts}  image: [labring/here:v1]\n"),
        )
        .unwrap();
        let out = apply_file(&ctl, &cf);
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let st = ctl.status(name);
        assert_eq!(
            step_of(&st, "local", "install")["state"],
            "succeeded",
            "{st}"
        );
        // One cluster per host: reset it before the next shape.
        let out = ctl.cli(&["reset", name, "--wait"]);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    }
}

/// A Clusterfile that is a Go template, in the shape sealos's `--values` examples take:
/// hosts and images from `range` over values, `with`, `toYaml | nindent`, `default`,
/// `env "SSH_PASSWORD"`; rendered by `berth apply --values --set --env` before it is sent.
/// Repeated `spec.env` names keep the last value and `SEALOS_SYS_*` names are dropped with a
/// warning (sealos's meaning); `BERTH_*` variables of the client never reach the template.
#[test]
fn a_go_template_clusterfile_renders_with_values_set_and_env() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["t0", "t1"]);
    let k8s = bundle_with(
        ctl.dir.path(),
        "labring/kubernetes",
        "rootfs",
        &[(
            "scripts/show.sh",
            "#!/bin/sh\necho \"greeting=$GREETING pods=$POD_CIDR dup=$DUP sys=${SEALOS_SYS_KUBE_VERSION:-unset} leak=[$LEAK]\"\n",
        )],
        "hooks:\n  install: scripts/show.sh\n",
    );
    push_dir(&ctl, &k8s, "labring/kubernetes:v1.27.7");
    let values = ctl.dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "name: tmpl\nmasters: [t0]\nnodes: [t1]\nimages:\n  - labring/kubernetes:v1.27.7\nnetworking:\n  podSubnet: 100.64.0.0/10\n  serviceSubnet: 10.96.0.0/22\nssh:\n  user: root\n",
    )
    .unwrap();
    let cf = ctl.dir.path().join("Clusterfile.tmpl");
    std::fs::write(
        &cf,
        r#"apiVersion: apps.sealos.io/v1beta1
kind: Cluster
metadata:
  name: {{ .Values.name }}
spec:
  hosts:
  - ips:
{{- range .Values.masters }}
    - {{ . }}
{{- end }}
    roles: [master, amd64]
{{- with .Values.nodes }}
  - ips:
  {{- range . }}
    - {{ . }}
  {{- end }}
    roles: [node, amd64]
{{- end }}
  image:
{{- range .Values.images }}
  - {{ . }}
{{- end }}
  env:
  - GREETING={{ .Values.greeting | default "hi" }}
  - POD_CIDR={{ .Values.networking.podSubnet }}
  - DUP=first
  - DUP=last
  - SEALOS_SYS_KUBE_VERSION=forged
  - LEAK={{ env "BERTH_TEST_SECRET" }}
{{- with .Values.ssh }}
  ssh:
    user: {{ .user }}
    passwd: {{ env "SSH_PASSWORD" | quote }}
{{- end }}
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
networking: {{ toYaml .Values.networking | nindent 2 }}
"#,
    )
    .unwrap();
    let out = ctl
        .cli_command(&[
            "apply",
            "-f",
            cf.to_str().unwrap(),
            "--values",
            values.to_str().unwrap(),
            "--set",
            "greeting=hello",
            "--env",
            "SSH_PASSWORD=hunter2",
            "--wait",
        ])
        .env("BERTH_TEST_SECRET", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: Clusterfile document 1 (Cluster): spec.env: SEALOS_SYS_KUBE_VERSION ignored")
            || err.contains("spec.env: SEALOS_SYS_KUBE_VERSION ignored: SEALOS_SYS_* names are set by the system, as in sealos"),
        "{err}"
    );
    let st = ctl.status("tmpl");
    assert_eq!(st["phase"], "Running", "{st}");
    for h in ["t0", "t1"] {
        let log = stdout(&ctl.cli(&["logs", "tmpl", "--host", h, "--step", "install"]));
        assert!(
            log.contains("greeting=hello pods=100.64.0.0/10 dup=last sys=unset leak=[]"),
            "{h}: {log}"
        );
    }
    // The rendered ClusterConfiguration reached the hosts; the password did not.
    let stored =
        std::fs::read_to_string(ctl.agent_dir("t1").join("clusters/tmpl/Clusterfile")).unwrap();
    assert!(stored.contains("podSubnet: 100.64.0.0/10"), "{stored}");
    assert!(!stored.contains("hunter2"), "{stored}");

    // A template error names the file and line; nothing is applied.
    std::fs::write(&cf, "metadata:\n  name: {{ .Values.name \n").unwrap();
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: {} (a Go template): line 2: unclosed action: `{{{{` without `}}}}`",
            cf.display()
        )
    );
    // Values for a file that is not a template would change nothing: refused.
    let plain = ctl.dir.path().join("plain.yaml");
    std::fs::write(
        &plain,
        "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\n",
    )
    .unwrap();
    let out = ctl.cli(&["apply", "-f", plain.to_str().unwrap(), "--set", "a=b"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("is not a template (no `{{`), so --values/--set would change nothing"),
        "{}",
        stderr(&out)
    );
}

/// A Config that no image of the cluster can take is refused when the Clusterfile is
/// applied, naming the document, the path and the images, and nothing is stored.
#[test]
fn a_config_no_image_can_take_is_refused_at_apply_time() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["x0"]);
    let k8s = bundle_with(
        ctl.dir.path(),
        "labring/kubernetes",
        "rootfs",
        &[("etc/kubeadm.yml", "a: 1\n")],
        "",
    );
    push_dir(&ctl, &k8s, "labring/kubernetes:v1.27.7");
    let calico = bundle_with(
        ctl.dir.path(),
        "labring/calico",
        "app",
        &[("charts/calico/values.yaml", "mtu: 1440\n")],
        "",
    );
    push_dir(&ctl, &calico, "labring/calico:v3.24.1");
    let head = "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: cfg\nspec:\n  hosts:\n  - ips: [x0]\n    roles: [master]\n  image: [labring/kubernetes:v1.27.7, labring/calico:v3.24.1]\n";
    let cases = [
        (
            "---\napiVersion: apps.sealos.io/v1beta1\nkind: Config\nmetadata:\n  name: flannel\nspec:\n  path: charts/flannel/values.yaml\n  strategy: merge\n  data: |\n    a: 1\n",
            "error: Clusterfile document 2 (Config flannel): spec.path: no image has `charts/flannel/values.yaml` (images: labring/kubernetes:v1.27.7, labring/calico:v3.24.1), so this merge Config would change nothing on any host; check the path (relative to the image's root, e.g. charts/calico/values.yaml), or name the image with spec.match (invalid_clusterfile)",
        ),
        (
            "---\napiVersion: apps.sealos.io/v1beta1\nkind: Config\nmetadata:\n  name: wrong-image\nspec:\n  path: charts/calico/values.yaml\n  match: labring/kubernetes:v1.27.7\n  strategy: merge\n  data: |\n    a: 1\n",
            "error: Clusterfile document 2 (Config wrong-image): spec.path: no image has `charts/calico/values.yaml` (the image it matches: labring/kubernetes:v1.27.7), so this merge Config would change nothing on any host; check the path (relative to the image's root, e.g. charts/calico/values.yaml), or use strategy override to write the whole file (invalid_clusterfile)",
        ),
    ];
    for (config, want) in cases {
        let cf = ctl.dir.path().join("cfg.yaml");
        std::fs::write(&cf, format!("{head}{config}")).unwrap();
        let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
        assert!(!out.status.success());
        assert_eq!(stderr(&out).trim(), want);
    }
    let clusters = stdout(&ctl.cli(&["get", "clusters", "-o", "json"]));
    assert_eq!(clusters.trim(), "[]");
    // The same Config on a path an image has is taken.
    let cf = ctl.dir.path().join("ok.yaml");
    std::fs::write(&cf, format!("{head}---\napiVersion: apps.sealos.io/v1beta1\nkind: Config\nmetadata:\n  name: calico\nspec:\n  path: charts/calico/values.yaml\n  strategy: merge\n  data: |\n    a: 1\n")).unwrap();
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
}
