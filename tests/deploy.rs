//! What can be checked about the deployment files without a container engine or a cluster:
//! the Dockerfile copies the binary its locked release build of the sources produces, exposes
//! the ports of the example gateway config, runs as the non-root user the Kubernetes manifests
//! run it as and reads the config path they mount; the manifests probe, scrape and route to
//! the ports of the config they mount; and the configs shipped under `deploy/` pass `gcpool check`.
//! (`deploy/check-kubernetes.sh` validates the rendered manifests against the Kubernetes schemas.)

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// Dockerfile instructions as (KEYWORD, arguments), comments dropped, `\` continuations joined.
fn instructions() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// Instructions of the last stage (after the last `FROM`), with that `FROM`'s image.
fn final_stage() -> (String, Vec<(String, String)>) {
    let all = instructions();
    let last_from = all
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("the Dockerfile has a FROM");
    let image = all[last_from]
        .1
        .split_whitespace()
        .next()
        .expect("FROM names an image")
        .to_owned();
    (image, all[last_from + 1..].to_vec())
}

/// The single binary's name, from the `[[bin]]` table of Cargo.toml.
fn bin_name() -> String {
    let manifest = read("Cargo.toml");
    let mut in_bin = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().trim_start_matches('=').trim();
            return value.trim_matches('"').to_owned();
        }
    }
    panic!("Cargo.toml has no [[bin]] name");
}

/// A JSON-array (exec form) instruction argument, e.g. `["run", "--config", "/x"]`.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form: {args}: {e}"))
}

fn dockerfile_config_path() -> String {
    let (_, stage) = final_stage();
    let cmd = stage
        .iter()
        .rfind(|(k, _)| k == "CMD")
        .map(|(_, a)| exec_form(a))
        .expect("the final stage has a CMD");
    let i = cmd
        .iter()
        .position(|a| a == "--config")
        .expect("CMD passes --config");
    cmd[i + 1].clone()
}

fn port_of(listen: &Value) -> u16 {
    let addr = listen.as_str().expect("listen is a string");
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// The builder's build of the real sources: the first `cargo build` RUN after `COPY src`
/// (the one before it builds a dummy crate to cache the dependencies).
fn source_build() -> String {
    let all = instructions();
    let sources = all
        .iter()
        .position(|(k, a)| k == "COPY" && a.split_whitespace().next() == Some("src"))
        .expect("the builder copies src");
    all[sources..]
        .iter()
        .find(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a.clone())
        .expect("a cargo build after the sources are copied")
}

#[test]
fn dockerfile_copies_the_release_binary() {
    let bin = bin_name();
    assert_eq!(bin, "gcpool");
    // The build of the real sources is a locked release build of that [[bin]] (all bins when
    // it names none).
    let build = source_build();
    for flag in ["--release", "--locked"] {
        assert!(
            build.split_whitespace().any(|w| w == flag),
            "the build of the sources passes {flag}: {build}"
        );
    }
    let words: Vec<&str> = build.split_whitespace().collect();
    let named = words.iter().enumerate().find_map(|(i, w)| match *w {
        "--bin" => Some(words.get(i + 1).copied().unwrap_or_default()),
        w => w.strip_prefix("--bin="),
    });
    if let Some(named) = named {
        assert_eq!(
            named, bin,
            "the build of the sources builds the [[bin]] of Cargo.toml: {build}"
        );
    }

    let (_, stage) = final_stage();
    let copies: Vec<&String> = stage
        .iter()
        .filter(|(k, a)| k == "COPY" && a.starts_with("--from="))
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "one COPY --from in the final stage: {copies:?}"
    );
    let parts: Vec<&str> = copies[0].split_whitespace().collect();
    let (src, dst) = (parts[1], parts[2]);
    assert!(src.starts_with('/'), "absolute source path: {src}");
    assert!(
        src.ends_with(&format!("/target/release/{bin}")),
        "COPY source {src} is not what `cargo build --release` produces (target/release/{bin})"
    );
    assert_eq!(dst, format!("/usr/local/bin/{bin}"));

    // The build ran in the WORKDIR the COPY reads from.
    let all = instructions();
    let workdir = all
        .iter()
        .find(|(k, _)| k == "WORKDIR")
        .map(|(_, a)| a.trim_end_matches('/').to_owned())
        .expect("the builder sets a WORKDIR");
    assert_eq!(src, format!("{workdir}/target/release/{bin}"));

    let entrypoint = stage
        .iter()
        .rfind(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| exec_form(a))
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint, vec![dst.to_owned()]);
}

#[test]
fn dockerfile_exposes_the_ports_of_the_gateway_config() {
    let config = yaml("config/data-actions-gateway.yaml");
    let mut expected = vec![
        port_of(&config["server"]["listen"]),
        port_of(&config["server"]["admin_listen"]),
    ];
    expected.sort_unstable();

    let (_, stage) = final_stage();
    let mut exposed: Vec<u16> = stage
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .map(|p| {
            p.trim_end_matches("/tcp")
                .parse()
                .unwrap_or_else(|e| panic!("EXPOSE {p}: {e}"))
        })
        .collect();
    exposed.sort_unstable();
    assert_eq!(exposed, expected);
    assert_eq!(exposed, vec![8080, 9464]);
    assert!(
        !instructions().iter().any(|(k, _)| k == "HEALTHCHECK"),
        "no HEALTHCHECK: probes use /healthz and /readyz"
    );
}

/// The gcpool manifests, each with the gcpool container in it.
const MANIFESTS: [&str; 2] = [
    "deploy/kubernetes/base/deployment.yaml",
    "deploy/kubernetes/overlays/sidecar/deployment.yaml",
];

/// The container named `gcpool` in a Deployment `manifest`.
fn gcpool_container<'a>(doc: &'a Value, manifest: &str) -> &'a Value {
    doc["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("gcpool"))
        .unwrap_or_else(|| panic!("{manifest}: no gcpool container"))
}

/// `key` of the effective securityContext of the gcpool container: its own, else the pod's.
fn security(doc: &Value, manifest: &str, key: &str) -> Option<i64> {
    gcpool_container(doc, manifest)["securityContext"][key]
        .as_i64()
        .or_else(|| doc["spec"]["template"]["spec"]["securityContext"][key].as_i64())
}

/// The final stage runs as a numeric non-root user (what `runAsNonRoot` can verify), the one
/// the manifests run the gcpool container as, on a `:nonroot` base.
#[test]
fn dockerfile_runs_as_non_root() {
    let (image, stage) = final_stage();
    assert!(image.ends_with(":nonroot"), "runtime base {image}");
    let user = stage
        .iter()
        .rfind(|(k, _)| k == "USER")
        .map(|(_, a)| a.clone())
        .expect("the final stage sets USER");
    let ids: Vec<i64> = user
        .split(':')
        .map(|id| {
            id.parse()
                .unwrap_or_else(|_| panic!("USER {user}: runAsNonRoot needs a numeric uid[:gid]"))
        })
        .collect();
    assert!(ids[0] != 0, "final USER is root: {user}");
    for manifest in MANIFESTS {
        let doc = yaml(manifest);
        assert_eq!(
            security(&doc, manifest, "runAsUser"),
            Some(ids[0]),
            "{manifest}: gcpool runs as the image's USER {user}"
        );
        if let Some(gid) = ids.get(1) {
            assert_eq!(
                security(&doc, manifest, "runAsGroup"),
                Some(*gid),
                "{manifest}: gcpool runs with the image's group {user}"
            );
        }
    }
}

/// The number a container port reference stands for: a number, or the name of one of
/// `container`'s ports.
fn container_port(container: &Value, port: &Value, manifest: &str) -> u16 {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).expect("a port number");
    }
    let name = port.as_str().expect("a port number or name");
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .map(|n| u16::try_from(n).expect("a port number"))
        .unwrap_or_else(|| panic!("{manifest}: no container port named {name}"))
}

/// Every gcpool container in the manifests runs with `--config` = the Dockerfile's CMD path,
/// mounts a ConfigMap whose key `gcpool.yaml` lands on exactly that path, and probes (and is
/// scraped on) the port that config's admin listener uses.
#[test]
fn kubernetes_manifests_mount_the_config_path_of_the_image() {
    let config_path = dockerfile_config_path();
    assert_eq!(config_path, "/etc/gcpool/gcpool.yaml");
    let (dir, file) = config_path.rsplit_once('/').expect("absolute path");

    for manifest in MANIFESTS {
        let doc = yaml(manifest);
        let spec = &doc["spec"]["template"]["spec"];
        let gcpool = gcpool_container(&doc, manifest);
        let args: Vec<&str> = gcpool["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            args,
            ["run", "--config", config_path.as_str()],
            "{manifest}"
        );

        let mount = gcpool["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(dir))
            .unwrap_or_else(|| panic!("{manifest}: nothing mounted at {dir}"));
        let volume = spec["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{manifest}: no volume for the config mount"));
        let configmap = volume["configMap"]["name"]
            .as_str()
            .expect("a ConfigMap volume");

        // The kustomization generates that ConfigMap from a file named like the CMD's file.
        let kustomization = yaml(&manifest.replace("deployment.yaml", "kustomization.yaml"));
        let generator = kustomization["configMapGenerator"]
            .as_sequence()
            .expect("configMapGenerator")
            .iter()
            .find(|g| g["name"].as_str() == Some(configmap))
            .unwrap_or_else(|| panic!("{manifest}: ConfigMap {configmap} is not generated"));
        let files: Vec<&str> = generator["files"]
            .as_sequence()
            .expect("files")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(files, [file], "{manifest}");

        // The probes and the scrape reach the admin listener of that config.
        let generated = Path::new(manifest).with_file_name(files[0]);
        let config = yaml(generated.to_str().expect("a UTF-8 path"));
        let admin = port_of(&config["server"]["admin_listen"]);
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &gcpool[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{manifest}");
            assert_eq!(
                container_port(gcpool, &get["port"], manifest),
                admin,
                "{manifest}: {probe} goes to server.admin_listen of {}",
                generated.display()
            );
        }
        let annotations = &doc["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(admin.to_string().as_str()),
            "{manifest}: Prometheus scrapes server.admin_listen of {}",
            generated.display()
        );
        assert_eq!(
            gcpool["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{manifest}"
        );
    }
}

/// The configs shipped under deploy/ are valid gcpool configs, and the ports the manifests
/// declare are the ones those configs listen on.
#[test]
fn deploy_configs_pass_gcpool_check() {
    let key_sha256 = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
    for config in [
        "deploy/kubernetes/base/gcpool.yaml",
        "deploy/kubernetes/overlays/sidecar/gcpool.yaml",
        "deploy/compose/gcpool.yaml",
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gcpool"));
        cmd.arg("check").arg("--config").arg(repo(config));
        for n in 1..=3 {
            cmd.env(format!("GC_CLIENT_0{n}_ID"), format!("client-{n}"));
            cmd.env(format!("GC_CLIENT_0{n}_SECRET"), format!("secret-{n}"));
        }
        cmd.env("GCPOOL_API_KEY_SHA256", key_sha256)
            .env("GCPOOL_REDIS_URL", "redis://:pw@redis:6379/0")
            .env_remove("GCPOOL_API_KEY");
        let out = cmd.output().expect("the gcpool binary must run");
        assert!(
            out.status.success(),
            "gcpool check {config} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let gateway = yaml("deploy/kubernetes/base/gcpool.yaml");
    assert_eq!(port_of(&gateway["server"]["listen"]), 8080);
    assert_eq!(port_of(&gateway["server"]["admin_listen"]), 9464);
    assert!(
        gateway["server"]["listen"]
            .as_str()
            .is_some_and(|l| l.starts_with("0.0.0.0:")),
        "a gateway in a container must listen on all interfaces"
    );
    let sidecar = yaml("deploy/kubernetes/overlays/sidecar/gcpool.yaml");
    assert!(
        sidecar["server"]["listen"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:")),
        "the sidecar's API listener stays on loopback"
    );
    assert_eq!(sidecar["inbound"]["allow_anonymous"].as_bool(), Some(true));

    // The Service exposes only the API port: each of its ports leads to the container port
    // the gateway config's API listener uses.
    let service = yaml("deploy/kubernetes/base/service.yaml");
    let service_ports = service["spec"]["ports"].as_sequence().expect("ports");
    let ports: Vec<i64> = service_ports
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, [8080]);
    let manifest = "deploy/kubernetes/base/deployment.yaml";
    let deployment = yaml(manifest);
    let container = gcpool_container(&deployment, manifest);
    let api = port_of(&gateway["server"]["listen"]);
    for port in service_ports {
        // A Service port without targetPort targets its own number.
        let target = match &port["targetPort"] {
            Value::Null => &port["port"],
            target => target,
        };
        assert_eq!(
            container_port(container, target, manifest),
            api,
            "Service port {} leads to server.listen of deploy/kubernetes/base/gcpool.yaml",
            port["name"].as_str().unwrap_or("(unnamed)")
        );
    }
}
