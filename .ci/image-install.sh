#!/bin/sh
# The container image's install steps, in one place: the Dockerfile runs this script, and so
# does tests/test_image.py (in a fresh venv), so what CI checks is what the image gets.
#
#   image-install.sh install PREFIX [EXTRAS]
#       Build the wheel from this repository, create a venv at PREFIX, install the wheel (with
#       EXTRAS, default "metrics"; "" for none) and its dependencies into it, then remove pip,
#       setuptools and wheel from it, so nothing in the venv can install packages.
#   image-install.sh remove-pip PYTHON
#       Remove pip, setuptools and wheel from the Python environment of PYTHON (the runtime
#       stage runs it on the base image's own interpreter).
#
# PYTHON3 (default python3) is the interpreter the venv is made from.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
python3=${PYTHON3:-python3}

remove_pip() {
    py=$1
    # pip uninstalls itself last: it is still needed to remove the other two.
    for dist in setuptools wheel pip; do
        if "$py" -m pip show -q "$dist" >/dev/null 2>&1; then
            "$py" -m pip uninstall -y -q "$dist" >/dev/null 2>&1
        fi
    done
    bindir=$(dirname "$py")
    rm -f "$bindir"/pip "$bindir"/pip3 "$bindir"/pip3.*
    if "$py" -c "import pip" >/dev/null 2>&1; then
        echo "image-install.sh: pip is still importable by $py" >&2
        exit 1
    fi
}

install() {
    prefix=$1
    extras=${2-metrics}
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # The wheel is built from a copy of the sources (the tree stays clean) in a throwaway venv,
    # so its build tools never reach PREFIX.
    mkdir "$work/src"
    (cd "$here" && tar -cf - --exclude=__pycache__ pyproject.toml README.md wire health) \
        | (cd "$work/src" && tar -xf -)
    "$python3" -m venv "$work/build"
    "$work/build/bin/pip" wheel -q --no-deps --disable-pip-version-check -w "$work/dist" \
        "$work/src"
    "$python3" -m venv "$prefix"
    wheel=$(ls "$work"/dist/trio_grpc_health-*.whl)
    if [ -n "$extras" ]; then
        requirement="trio-grpc-health[$extras] @ file://$wheel"
    else
        requirement="trio-grpc-health @ file://$wheel"
    fi
    "$prefix/bin/pip" install -q --disable-pip-version-check "$requirement"
    remove_pip "$prefix/bin/python"
    # The entry points the image promises must start.
    "$prefix/bin/trio-grpc-health" serve --help >/dev/null
    "$prefix/bin/trio-grpc-health-probe" -version >/dev/null
}

case "${1-}" in
    install)
        [ $# -ge 2 ] || { echo "usage: $0 install PREFIX [EXTRAS]" >&2; exit 2; }
        shift
        install "$@"
        ;;
    remove-pip)
        [ $# -eq 2 ] || { echo "usage: $0 remove-pip PYTHON" >&2; exit 2; }
        remove_pip "$2"
        ;;
    *)
        echo "usage: $0 install PREFIX [EXTRAS] | remove-pip PYTHON" >&2
        exit 2
        ;;
esac
