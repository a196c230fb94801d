#!/usr/bin/env bash
# Set up and run pi-classifier from a checkout, on Debian or Raspberry Pi OS.
#
#   ./dev.sh demo   set up .venv, then run the live classifier on the test
#                   photos with the web view at http://127.0.0.1:8080
#   ./dev.sh test   set up every test environment (Debian packages, three
#                   virtual environments), then run the whole test suite
#   ./dev.sh setup  only set up .venv
#
# Each step checks what is there first, so a second run installs nothing.
set -euo pipefail

cd "$(dirname "$0")"
REPO=$PWD
TESTDATA=${PI_CLASSIFIER_TESTDATA:-$REPO/../shared/testdata}
PYTHON=${PYTHON:-python3}
PICAMERA2_VERSION=0.3.38
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf 'dev.sh: %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        fail "need root to run: $*"
    fi
}

missing_debs() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null \
            | grep -q "install ok installed" || echo "$package"
    done
}

apt_install() {
    local missing
    mapfile -t missing < <(missing_debs "$@")
    [[ ${#missing[@]} -eq 0 ]] && return 0
    say "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}"
}

ensure_venv_support() {
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null && return 0
    command -v apt-get >/dev/null || fail "$PYTHON cannot create virtual environments"
    apt_install python3-venv
}

# make_venv DIR EXTRAS: create DIR and install the project into it with
# EXTRAS, reinstalling only when pyproject.toml changed.
make_venv() {
    local dir=$1 extras=$2
    local stamp="$dir/.installed" want
    want=$(sha256sum < pyproject.toml | cut -c1-16)$extras
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    say "setting up $dir with [$extras]"
    [[ -x $dir/bin/python ]] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip
    "$dir/bin/python" -m pip install -q -e ".[$extras]"
    echo "$want" > "$stamp"
}

# make_tool_venv DIR REQUIREMENTS: a virtual environment for a test tool.
make_tool_venv() {
    local dir=$1 requirements=$2 want
    want=$(sha256sum < "$requirements" | cut -c1-16)
    [[ -f $dir/.installed && $(cat "$dir/.installed") == "$want" ]] && return 0
    say "setting up $dir from $requirements"
    [[ -x $dir/bin/python ]] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q -r "$requirements"
    echo "$want" > "$dir/.installed"
}

setup_main() {
    ensure_venv_support
    make_venv .venv litert,opencv
}

demo() {
    setup_main
    [[ -d $TESTDATA/images ]] || fail "test photos not found at $TESTDATA/images"
    say "live classifier on the test photos; watch it at http://127.0.0.1:8080"
    PI_CLASSIFIER_MODEL_DIR=${PI_CLASSIFIER_MODEL_DIR:-$TESTDATA/models} \
        exec .venv/bin/pi-classifier run --config config/pi-classifier.yaml \
        --source "images:$TESTDATA/images" --web 127.0.0.1:8080 "$@"
}

setup_tests() {
    apt_install python3-venv systemd chromium chromium-driver
    bash tests/system/setup.sh
    ensure_venv_support
    make_venv .venv litert,opencv,test
    .venv/bin/python -m pip download -q --no-deps "picamera2==$PICAMERA2_VERSION" \
        -d .cache/wheels
    if "$PYTHON" -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then
        make_venv .venv-tflite tflite-runtime,test
    else
        say "tflite-runtime has no wheels for this Python: its run is left out"
    fi
    make_tool_venv .venv-ansible tests/ansible-requirements.txt
}

# pytest exits 5 when it collects nothing; that must fail, not pass quietly.
run_pytest() {
    local python=$1
    shift
    local code=0
    "$python" -m pytest -p no:cacheprovider "$@" || code=$?
    [[ $code -eq 5 ]] && say "error: pytest collected no tests"
    return "$code"
}

run_tests() {
    setup_tests
    say "ruff"
    .venv/bin/ruff check .
    export PI_CLASSIFIER_ANSIBLE_BIN=$REPO/.venv-ansible/bin
    say "whole suite with LiteRT (ai-edge-litert)"
    run_pytest .venv/bin/python "$@"
    if [[ -x .venv-tflite/bin/python ]]; then
        say "suite again with tflite-runtime (numpy < 2)"
        PI_CLASSIFIER_TEST_RUNTIME=tflite-runtime run_pytest .venv-tflite/bin/python \
            -m "not system and not browser" --ignore=tests/test_ansible.py "$@"
    fi
}

case "${1:-}" in
    demo) shift; demo "$@" ;;
    test) shift; run_tests "$@" ;;
    setup) setup_main ;;
    *) fail "usage: ./dev.sh demo | test | setup" ;;
esac
