#!/usr/bin/env bash
# Install the pinned KEDA release into namespace `keda` (idempotent: helm upgrade --install).
# Usage: k8s/keda/install.sh [HELM]    (HELM defaults to .tools/helm-3/helm, then `helm`)
set -euo pipefail
KEDA_CHART_VERSION="${KEDA_CHART_VERSION:-2.20.0}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
helm="${1:-}"
if [[ -z "$helm" ]]; then
  if [[ -x "$root/.tools/helm-3/helm" ]]; then helm="$root/.tools/helm-3/helm"; else helm="helm"; fi
fi
"$helm" repo add kedacore https://kedacore.github.io/charts --force-update >/dev/null
"$helm" repo update kedacore >/dev/null
"$helm" upgrade --install keda kedacore/keda \
  --namespace keda --create-namespace \
  --version "$KEDA_CHART_VERSION" \
  --values "$here/values.yaml" \
  --wait --timeout 5m
kubectl -n keda rollout status deploy/keda-operator --timeout=180s
kubectl get crd scaledobjects.keda.sh triggerauthentications.keda.sh
