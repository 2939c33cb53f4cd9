//! What can be checked about the deployment files without a container engine or a cluster:
//! the Dockerfile copies the binary its locked release build of the sources produces, exposes
//! the ports of the example gateway config, runs as the non-root user the Kubernetes manifests
//! run it as and reads the config path they mount; the manifests probe, scrape and route to
//! the ports of the config they mount; secrets reach gcpool as mounted files its config reads and
//! the ConfigMap keeps its name, so a change to either is reloaded without a restart; the configs
//! shipped under `deploy/` pass `gcpool check`; and the queue-wait alert can fire below the
//! `queue.max_wait` of those configs.
//! (`deploy/check-kubernetes.sh` validates the rendered manifests against the Kubernetes schemas
//! and repeats the secret-file check on them.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
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

/// Every document of a multi-document YAML file.
fn yaml_docs(path: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("parse {path}: {e}")))
        .collect()
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

/// A copy of the config `manifest` mounts, in a directory of its own, with the Secrets the gcpool
/// container mounts written there from their `secret.example.yaml` (placeholders and all) and the
/// config's paths into those mounts pointed at them: what `gcpool check` would read in the pod.
fn config_with_example_secrets(manifest: &str) -> PathBuf {
    let (config_path, _, _) = mounted_config(manifest);
    let mut text = read(&config_path);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("deploy")
        .join(manifest.replace('/', "_"));
    let _ = std::fs::remove_dir_all(&root);
    let doc = yaml(manifest);
    for mount in volume_mounts(gcpool_container(&doc, manifest)) {
        let volume = volume_of(&doc, mount, manifest);
        let Some(secret) = volume["secret"]["secretName"].as_str() else {
            continue;
        };
        let at = mount["mountPath"].as_str().expect("a mountPath");
        let dir = root.join(at.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("create the secret dir");
        let example = Path::new(manifest).with_file_name("secret.example.yaml");
        let example = yaml_docs(example.to_str().expect("a UTF-8 path"))
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(secret))
            .unwrap_or_else(|| panic!("{manifest}: no example of Secret {secret}"));
        for (key, value) in example["stringData"].as_mapping().expect("stringData") {
            let key = key.as_str().expect("a key");
            let value = value.as_str().expect("a string value");
            std::fs::write(dir.join(key), value).expect("write a secret file");
        }
        text = text.replace(&format!("{at}/"), &format!("{}/", dir.display()));
    }
    std::fs::create_dir_all(&root).expect("create the config dir");
    let config = root.join("gcpool.yaml");
    std::fs::write(&config, text).expect("write the config");
    config
}

/// The configs shipped under deploy/ are valid gcpool configs (the Kubernetes ones with the
/// example Secrets mounted where the manifests mount them), and the ports the manifests declare
/// are the ones those configs listen on.
#[test]
fn deploy_configs_pass_gcpool_check() {
    let configs = MANIFESTS
        .iter()
        .map(|manifest| config_with_example_secrets(manifest))
        .chain([repo("deploy/compose/gcpool.yaml")]);
    for config in configs {
        // Nothing comes from the environment but what the compose file sets (with defaults).
        let out = Command::new(env!("CARGO_BIN_EXE_gcpool"))
            .arg("check")
            .arg("--config")
            .arg(&config)
            .env_clear()
            .output()
            .expect("the gcpool binary must run");
        assert!(
            out.status.success(),
            "gcpool check {} failed:\n{}",
            config.display(),
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

/// The config a manifest mounts: (its file in the repository, the kustomization that generates
/// its ConfigMap, that kustomization's generator of it).
fn mounted_config(manifest: &str) -> (String, String, Value) {
    let doc = yaml(manifest);
    let gcpool = gcpool_container(&doc, manifest);
    let config_path = dockerfile_config_path();
    let (dir, file) = config_path.rsplit_once('/').expect("absolute path");
    let mount = volume_mounts(gcpool)
        .find(|m| m["mountPath"].as_str() == Some(dir))
        .unwrap_or_else(|| panic!("{manifest}: nothing mounted at {dir}"));
    let volume = volume_of(&doc, mount, manifest);
    let configmap = volume["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{manifest}: {dir} is not a ConfigMap volume"));
    let kustomization = manifest.replace("deployment.yaml", "kustomization.yaml");
    let generator = yaml(&kustomization)["configMapGenerator"]
        .as_sequence()
        .expect("configMapGenerator")
        .iter()
        .find(|g| g["name"].as_str() == Some(configmap))
        .cloned()
        .unwrap_or_else(|| panic!("{manifest}: ConfigMap {configmap} is not generated"));
    let config = Path::new(manifest).with_file_name(file);
    let config = config.to_str().expect("a UTF-8 path").to_owned();
    (config, kustomization, generator)
}

fn volume_mounts(container: &Value) -> impl Iterator<Item = &Value> {
    container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
}

/// The pod volume a container's `mount` mounts.
fn volume_of<'a>(doc: &'a Value, mount: &Value, manifest: &str) -> &'a Value {
    doc["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{manifest}: no volume named {:?}", mount["name"]))
}

/// `(key path, value)` of every `*_file` key of a config.
fn file_keys(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key.as_str().unwrap_or_default();
                let here = if at.is_empty() {
                    key.to_owned()
                } else {
                    format!("{at}.{key}")
                };
                match value.as_str() {
                    Some(path) if key.ends_with("_file") => out.push((here, path.to_owned())),
                    _ => file_keys(value, &here, out),
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                file_keys(item, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Every string value of a config that takes something from the environment (`${VAR}`).
fn env_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.replace("$$", "").contains("${") => out.push(s.clone()),
        Value::Mapping(map) => map.values().for_each(|v| env_references(v, out)),
        Value::Sequence(items) => items.iter().for_each(|v| env_references(v, out)),
        _ => {}
    }
}

/// The Secret and key a file at `path` in the gcpool container comes from.
///
/// # Errors
/// When no Secret volume is mounted over `path` (not through `subPath`, whose files never
/// update) or the volume projects no item to it.
fn secret_item(
    doc: &Value,
    container: &Value,
    path: &str,
    manifest: &str,
) -> Result<(String, String), String> {
    let (mount, rest) = volume_mounts(container)
        .filter_map(|m| {
            let dir = m["mountPath"].as_str()?.trim_end_matches('/');
            Some((m, path.strip_prefix(dir)?.strip_prefix('/')?))
        })
        .max_by_key(|(m, _)| m["mountPath"].as_str().map_or(0, str::len))
        .ok_or("no volume is mounted over it")?;
    if !mount["subPath"].is_null() {
        return Err(format!(
            "{:?} is mounted with subPath: its files never update",
            mount["name"]
        ));
    }
    let volume = volume_of(doc, mount, manifest);
    let secret = volume["secret"]["secretName"]
        .as_str()
        .ok_or_else(|| format!("volume {:?} is not a Secret", volume["name"]))?;
    let key = match volume["secret"]["items"].as_sequence() {
        None => rest.to_owned(),
        Some(items) => items
            .iter()
            .find(|i| i["path"].as_str() == Some(rest))
            .and_then(|i| i["key"].as_str())
            .ok_or_else(|| format!("Secret volume {secret} projects no item to {rest}"))?
            .to_owned(),
    };
    Ok((secret.to_owned(), key))
}

/// The keys of Secret `name` in the `secret.example.yaml` next to `manifest`.
fn example_secret_keys(manifest: &str, name: &str) -> BTreeSet<String> {
    let example = Path::new(manifest).with_file_name("secret.example.yaml");
    let example = example.to_str().expect("a UTF-8 path");
    let secret = yaml_docs(example)
        .into_iter()
        .find(|d| {
            d["kind"].as_str() == Some("Secret") && d["metadata"]["name"].as_str() == Some(name)
        })
        .unwrap_or_else(|| panic!("{example} has no Secret {name}"));
    ["stringData", "data"]
        .iter()
        .filter_map(|field| secret[*field].as_mapping())
        .flat_map(|map| map.keys().filter_map(|k| k.as_str().map(str::to_owned)))
        .collect()
}

/// gcpool reads every secret from a file of a mounted Secret, so a changed Secret reaches the
/// running process (README Reload): no Secret in its environment, no `${VAR}` in the mounted
/// config, every `*_file` path in a Secret volume under a key the example Secret has, and every
/// key of the Secrets it mounts read by the config.
#[test]
fn kubernetes_secrets_reach_gcpool_as_files() {
    for manifest in MANIFESTS {
        let doc = yaml(manifest);
        let gcpool = gcpool_container(&doc, manifest);
        assert!(
            gcpool["envFrom"].is_null(),
            "{manifest}: gcpool takes envFrom {:?}: a changed Secret reaches it only after a restart; \
             mount the Secret and read it with the config's *_file keys",
            gcpool["envFrom"]
        );
        for var in gcpool["env"].as_sequence().into_iter().flatten() {
            assert!(
                var["valueFrom"].is_null(),
                "{manifest}: gcpool's env {:?} comes from {:?}: a change reaches it only after a restart",
                var["name"],
                var["valueFrom"]
            );
        }

        let (config_path, _, _) = mounted_config(manifest);
        let config = yaml(&config_path);
        let mut from_env = Vec::new();
        env_references(&config, &mut from_env);
        assert!(
            from_env.is_empty(),
            "{config_path}: {from_env:?} come from the environment, which changes only with a restart; \
             read secrets with *_file keys"
        );
        let mut files = Vec::new();
        file_keys(&config, "", &mut files);
        assert!(
            !files.is_empty(),
            "{config_path}: no *_file key reads a secret"
        );

        let mut read = BTreeSet::new();
        for (key, path) in &files {
            let (secret, item) = secret_item(&doc, gcpool, path, manifest)
                .unwrap_or_else(|e| panic!("{config_path}: {key} = {path}: {e}"));
            let keys = example_secret_keys(manifest, &secret);
            assert!(
                keys.contains(&item),
                "{config_path}: {key} reads key {item} of Secret {secret}, which the example \
                 Secret does not have: {keys:?}"
            );
            read.insert((secret, item));
        }
        for mount in volume_mounts(gcpool) {
            let volume = volume_of(&doc, mount, manifest);
            let Some(secret) = volume["secret"]["secretName"].as_str() else {
                continue;
            };
            for key in example_secret_keys(manifest, secret) {
                assert!(
                    read.contains(&(secret.to_owned(), key.clone())),
                    "{manifest}: key {key} of the mounted Secret {secret} is read by no *_file key of {config_path}"
                );
            }
        }
    }
}

/// A changed config reaches the running gcpool as a changed file (README Reload): the mounted
/// ConfigMap keeps its name (a content-hash suffix renames it on every change, which rolls the
/// pods instead) and is not mounted through `subPath` (whose files never update).
#[test]
fn kubernetes_config_changes_reach_the_mounted_file() {
    for manifest in MANIFESTS {
        let (_, kustomization, generator) = mounted_config(manifest);
        let name = generator["name"].as_str().expect("a generator name");
        let no_hash = generator["options"]["disableNameSuffixHash"]
            .as_bool()
            .or_else(|| {
                yaml(&kustomization)["generatorOptions"]["disableNameSuffixHash"].as_bool()
            });
        assert_eq!(
            no_hash,
            Some(true),
            "{kustomization}: ConfigMap {name} is generated with a content-hash name: every change \
             renames it and rolls the pods instead of reloading (set options.disableNameSuffixHash)"
        );
        let doc = yaml(manifest);
        for mount in volume_mounts(gcpool_container(&doc, manifest)) {
            assert!(
                mount["subPath"].is_null(),
                "{manifest}: {:?} is mounted through subPath: its files never update",
                mount["name"]
            );
        }
    }
}

/// Seconds of a config duration such as `250ms`, `5s`, `1m`.
fn seconds(duration: &str) -> f64 {
    let (number, unit) = duration
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| duration.split_at(i))
        .unwrap_or_else(|| panic!("no unit in {duration}"));
    let number: f64 = number.parse().unwrap_or_else(|e| panic!("{duration}: {e}"));
    number
        * match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            _ => panic!("unit of {duration}"),
        }
}

/// The p99 Prometheus' `histogram_quantile` reports when every observation lies in the bucket
/// holding `value`, for the upper bounds `bounds` (ascending, finite).
fn p99_of_observations_at(value: f64, bounds: &[f64]) -> f64 {
    match bounds.iter().position(|b| value <= *b) {
        // In the +Inf bucket: histogram_quantile answers the highest finite bound.
        None => *bounds.last().expect("finite buckets"),
        Some(i) => {
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            lower + (bounds[i] - lower) * 0.99
        }
    }
}

/// `GcpoolQueueWaitHigh` fires at 80 % of the `budgets.queue.max_wait` of the configs deployed
/// with the rules, and can fire: waits never exceed `max_wait`, and with gcpool's buckets the
/// p99 of waits at `max_wait` exceeds the threshold.
#[test]
fn queue_wait_alert_follows_max_wait() {
    let rules = yaml("deploy/prometheus/rules.yml");
    let expr = rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .find(|r| r["alert"].as_str() == Some("GcpoolQueueWaitHigh"))
        .and_then(|r| r["expr"].as_str())
        .expect("an alert GcpoolQueueWaitHigh with an expr");
    // `p99 > SHARE * gcpool_queue_max_wait_seconds`: each gcpool's own max_wait.
    let share: f64 = expr
        .trim()
        .strip_prefix("gcpool:queue_wait_seconds:p99 >")
        .and_then(|t| t.trim().strip_suffix("* gcpool_queue_max_wait_seconds"))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("GcpoolQueueWaitHigh is `p99 > SHARE * gcpool_queue_max_wait_seconds`: {expr}")
        });
    assert!(
        share > 0.0 && share < 1.0,
        "GcpoolQueueWaitHigh fires above {share} x max_wait: waits never exceed max_wait"
    );

    // The buckets a live gcpool exposes.
    let registry = prometheus::Registry::new();
    let _metrics = gcpool::metrics::Metrics::register(&registry).expect("metrics register");
    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut text)
        .expect("metrics encode");
    let bounds: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("gcpool_queue_wait_seconds_bucket{"))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next()?.parse().ok())
        .filter(|b: &f64| b.is_finite())
        .collect();
    assert!(
        !bounds.is_empty(),
        "no gcpool_queue_wait_seconds buckets in:\n{text}"
    );

    for config in [
        "deploy/kubernetes/base/gcpool.yaml",
        "deploy/kubernetes/overlays/sidecar/gcpool.yaml",
        "deploy/compose/gcpool.yaml",
        "config/data-actions-gateway.yaml",
        "config/sidecar.yaml",
        "config/fleet-redis.yaml",
    ] {
        let max_wait = yaml(config)["budgets"]["queue"]["max_wait"]
            .as_str()
            .map_or(10.0, seconds); // README: queue.max_wait defaults to 10s
        let threshold = share * max_wait;
        let highest = p99_of_observations_at(max_wait, &bounds);
        assert!(
            highest > threshold,
            "GcpoolQueueWaitHigh cannot fire for {config}: waits are at most {max_wait} s, whose \
             p99 reads {highest} s with the buckets {bounds:?}, not above {threshold} s"
        );
    }
}
