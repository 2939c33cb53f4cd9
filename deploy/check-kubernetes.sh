#!/usr/bin/env bash
# Render every kustomize overlay under deploy/kubernetes/overlays with `kubectl kustomize` and
# validate the output offline against the Kubernetes OpenAPI schemas with kubernetes-validate
# (PyPI; bundled schemas, no cluster needed), strict: unknown fields are errors.
# Custom resources with no built-in schema are allowed only for the kinds in ALLOWED_CRDS
# (kubernetes-validate only warns about them); any other schema-less kind fails.
# Also validates the secret.example.yaml files, which are deliberately not in any kustomization.
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
