#!/usr/bin/env bash
# Render every kustomize overlay under deploy/kubernetes/overlays with `kubectl kustomize` and
# validate the output offline against the Kubernetes OpenAPI schemas with kubernetes-validate
# (PyPI; bundled schemas, no cluster needed), strict: unknown fields are errors.
# Custom resources with no built-in schema are allowed only for the kinds in ALLOWED_CRDS
# (kubernetes-validate only warns about them); any other schema-less kind fails.
# Also validates the secret.example.yaml files, which are deliberately not in any kustomization.
# Then checks what the README's Reload section promises on the rendered output: every secret the
# gcpool container's config reads (`*_file`) lies in a mounted Secret volume (no Secret in its
# environment), and a changed gcpool.yaml leaves every Deployment's pod template as it is (the
# ConfigMap changes in place and gcpool reloads it; a content-hash name would roll the pods).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.32.0}"
ALLOWED_CRDS="PodMonitor"

command -v kubectl >/dev/null || { echo "check-kubernetes: kubectl not found" >&2; exit 1; }
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "== installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet kubernetes-validate
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0

validate() { # validate FILE LABEL
  local file="$1" label="$2" log="$out/log" rc=0
  kubernetes-validate --kubernetes-version "$K8S_VERSION" --strict "$file" >"$log" 2>&1 || rc=$?
  grep -v '^INFO ' "$log" || true
  if [ "$rc" -ne 0 ]; then
    echo "FAIL $label: kubernetes-validate exited $rc" >&2
    status=1
  fi
  # Schema-less kinds only warn; allow the known CRDs, fail on anything else (a typo in kind or
  # apiVersion would otherwise pass unchecked).
  local unknown
  unknown="$(grep "Couldn't find schema" "$log" | grep -Ev "for kind ($ALLOWED_CRDS) with" || true)"
  if [ -n "$unknown" ]; then
    echo "FAIL $label: resources without a schema: $unknown" >&2
    status=1
  fi
  if ! grep -q '^INFO .* passed for resource' "$log"; then
    echo "FAIL $label: nothing was validated" >&2
    status=1
  fi
  echo "== $label: $(grep -c '^INFO .* passed for resource' "$log" || true) resources valid against Kubernetes $K8S_VERSION"
}

overlays=(deploy/kubernetes/overlays/*/)
[ "${#overlays[@]}" -gt 0 ] && [ -d "${overlays[0]}" ] || { echo "no overlays found" >&2; exit 1; }
for dir in "${overlays[@]}"; do
  name="$(basename "$dir")"
  rendered="$out/$name.yaml"
  if ! kubectl kustomize "$dir" >"$rendered"; then
    echo "FAIL $name: kubectl kustomize failed" >&2
    status=1
    continue
  fi
  validate "$rendered" "overlay $name"
done

# reload_check RENDERED: the gcpool containers of RENDERED read their secrets from mounted Secrets.
reload_check() {
  python3 - "$1" <<'PY'
import sys, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
problems, checked = [], 0

def file_keys(node, at=""):
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{at}.{key}" if at else key
            if key.endswith("_file") and isinstance(value, str):
                yield here, value
            else:
                yield from file_keys(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from file_keys(item, f"{at}[{i}]")

for d in docs:
    if d["kind"] != "Deployment":
        continue
    spec = d["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        if c["name"] != "gcpool":
            continue
        where = f'Deployment {d["metadata"]["name"]}'
        if c.get("envFrom"):
            problems.append(f"{where}: gcpool takes envFrom {c['envFrom']}: a changed Secret reaches it only after a restart")
        for var in c.get("env", []):
            if "valueFrom" in var:
                problems.append(f"{where}: gcpool's env {var['name']} comes from {var['valueFrom']}")
        mounts = c.get("volumeMounts", [])
        config_path = c["args"][c["args"].index("--config") + 1]
        config_dir, config_file = config_path.rsplit("/", 1)
        cm_mount = next((m for m in mounts if m["mountPath"] == config_dir), None)
        cm = cm_mount and configmaps.get(volumes[cm_mount["name"]].get("configMap", {}).get("name"))
        if not cm or config_file not in cm.get("data", {}):
            problems.append(f"{where}: no rendered ConfigMap holds {config_path}")
            continue
        config = yaml.safe_load(cm["data"][config_file])
        files = list(file_keys(config))
        if not files:
            problems.append(f"{where}: {config_path} reads no secret from a file")
        for key, path in files:
            under = [m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")]
            mount = max(under, key=lambda m: len(m["mountPath"]), default=None)
            volume = mount and volumes.get(mount["name"])
            if not volume or "secret" not in volume or "subPath" in mount:
                problems.append(f"{where}: {key} = {path} is not in a mounted Secret volume (without subPath)")
            checked += 1

for p in problems:
    print("  " + p, file=sys.stderr)
if not problems:
    print(f"   {checked} *_file secrets of the gcpool config lie in mounted Secret volumes")
sys.exit(1 if problems else 0)
PY
}

# Render each overlay again with every gcpool.yaml changed; the Deployments must stay the same.
cp -r deploy/kubernetes "$out/changed"
find "$out/changed" -name gcpool.yaml -exec sh -c 'echo "# changed" >>"$1"' _ {} \;
for dir in "${overlays[@]}"; do
  name="$(basename "$dir")"
  [ -s "$out/$name.yaml" ] || continue
  echo "== overlay $name: secrets as files, config changes without a restart"
  reload_check "$out/$name.yaml" || { echo "FAIL $name: gcpool's secrets do not reach it as files" >&2; status=1; }
  kubectl kustomize "$out/changed/overlays/$name" >"$out/$name.changed.yaml"
  if ! diff <(python3 -c 'import sys, yaml; print(yaml.safe_dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"]))' "$out/$name.yaml") \
            <(python3 -c 'import sys, yaml; print(yaml.safe_dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"]))' "$out/$name.changed.yaml") >&2; then
    echo "FAIL $name: a changed gcpool.yaml changes the Deployment (a rolling restart, not a reload)" >&2
    status=1
  else
    echo "   a changed gcpool.yaml leaves the Deployments unchanged"
  fi
done

while IFS= read -r secret; do
  validate "$secret" "$secret"
  if ! grep -q 'CHANGE-ME' "$secret"; then
    echo "FAIL $secret: an example secret must hold CHANGE-ME placeholders only" >&2
    status=1
  fi
done < <(find deploy/kubernetes -name 'secret.example.yaml' | sort)

if [ "$status" -ne 0 ]; then
  echo "check-kubernetes: FAILED" >&2
else
  echo "check-kubernetes: ok"
fi
exit "$status"
