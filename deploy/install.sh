#!/usr/bin/env bash
# Install pi-classifier as a systemd service on Raspberry Pi OS or any Debian.
#
# Run it again at any time: every step checks what is already in place and
# changes only what differs, so a machine with everything installed needs no
# network. See usage() below, or run it with --help.
set -Eeuo pipefail

readonly NAME=pi-classifier
readonly PREFIX=/opt/pi-classifier
readonly VENV=$PREFIX/venv
readonly CONSTRAINTS=$PREFIX/constraints.txt
# What the Python packages were last installed from; lives in the venv, so a
# new venv starts without it.
readonly PACKAGES_STAMP=$VENV/pi-classifier-inputs.sha256
readonly SHIPPED_CONFIG=$PREFIX/config.default.yaml
readonly CONFIG_DIR=/etc/pi-classifier
readonly CONFIG=$CONFIG_DIR/config.yaml
readonly STATE_DIR=/var/lib/pi-classifier
readonly MODEL_DIR=$STATE_DIR/models
readonly RECORD=$PREFIX/install-record
readonly UNIT_DIR=/etc/systemd/system
readonly SERVICE=pi-classifier.service
readonly KIOSK_SERVICE=pi-classifier-kiosk.service
readonly DEFAULT_MODEL=mobilenet_v2_1.0_224_quant
readonly CMDLINE=${PI_CLASSIFIER_CMDLINE:-/boot/firmware/cmdline.txt}
readonly KIOSK_CMDLINE_ARGS=(consoleblank=0 vt.global_cursor_default=0)
readonly KIOSK_MASKED_UNITS=(getty@tty1.service autovt@tty1.service)
readonly SERVICE_GROUPS=(video render)
readonly DROP_IN_DIR=$UNIT_DIR/$SERVICE.d
readonly WEB_LAN_DROP_IN=web-lan.conf

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
SOURCE_DIR=$(dirname "$SCRIPT_DIR")
readonly SOURCE_DIR

wheels=""
runtime=litert
model_file=""
labels_file=""
start=yes
web_lan=no
action=install
purge=no
temporary_dirs=()

usage() {
    cat <<EOF
Usage: deploy/install.sh [OPTION]...
Install pi-classifier as a systemd service, or run again to update it.

  --wheels DIR        install the Python packages from the wheels in DIR
                      only (pip --no-index), for machines without internet
  --runtime NAME      litert (default) or tflite-runtime (pins numpy below 2)
  --model FILE        install this model file instead of downloading it
  --labels FILE       install this label file instead of downloading it
  --no-start          enable the service but do not start it (image builds)
  --web-lan           let the web view be reached from private networks:
                      installs the drop-in $WEB_LAN_DROP_IN (the config must
                      also set web.enabled, web.listen and web.token)
  --uninstall         remove the service, venv, user and kiosk settings;
                      keeps $CONFIG_DIR and the models
  --purge             with --uninstall: remove $CONFIG_DIR and
                      $STATE_DIR too
  -h, --help          show this help

Without --model, the model is downloaded with its pinned SHA-256 by
"pi-classifier fetch-model"; set PI_CLASSIFIER_MODEL_URL to fetch it from a
local mirror instead (for example file:///media/usb/models/).
EOF
}

say() {
    echo "install.sh: $*"
}

fail() {
    echo "install.sh: error: $*" >&2
    exit 1
}

on_error() {
    fail "'$1' failed (line $2); nothing after it was done"
}

remove_temporary_dirs() {
    if [[ ${#temporary_dirs[@]} -gt 0 ]]; then
        rm -rf "${temporary_dirs[@]}"
    fi
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --wheels) wheels=$(needs_value "$@"); shift ;;
            --runtime) runtime=$(needs_value "$@"); shift ;;
            --model) model_file=$(needs_value "$@"); shift ;;
            --labels) labels_file=$(needs_value "$@"); shift ;;
            --no-start) start=no ;;
            --web-lan) web_lan=yes ;;
            --uninstall) action=uninstall ;;
            --purge) purge=yes ;;
            -h|--help) usage; exit 0 ;;
            *) fail "unknown option '$1' (see --help)" ;;
        esac
        shift
    done
}

needs_value() {
    [[ $# -ge 2 && -n $2 ]] || fail "$1 needs a value (see --help)"
    echo "$2"
}

check_args() {
    case $runtime in
        litert|tflite-runtime) ;;
        *) fail "--runtime must be litert or tflite-runtime, not '$runtime'" ;;
    esac
    if [[ $web_lan == yes && $action == uninstall ]]; then
        fail "--web-lan does not go with --uninstall"
    fi
    if [[ $purge == yes && $action != uninstall ]]; then
        fail "--purge only goes with --uninstall"
    fi
    if [[ -n $wheels ]] && ! compgen -G "$wheels/*.whl" >/dev/null; then
        fail "--wheels $wheels is not a folder of wheels (*.whl)"
    fi
    local file
    for file in "$model_file" "$labels_file"; do
        if [[ -n $file && ! -f $file ]]; then
            fail "$file is not a file"
        fi
    done
}

check_machine() {
    [[ $EUID -eq 0 ]] || fail "run as root, for example: sudo $0 $*"
    command -v dpkg-query >/dev/null \
        || fail "this installer needs a Debian-like system (dpkg and apt)"
    local arch
    arch=$(dpkg --print-architecture)
    case $arch in
        amd64|arm64) ;;
        *) fail "needs a 64-bit system (arm64 or amd64), not $arch:" \
                "on a Pi, use the 64-bit Raspberry Pi OS" ;;
    esac
}

is_raspberry_pi() {
    grep -qa "Raspberry Pi" /proc/device-tree/model 2>/dev/null
}

systemd_running() {
    [[ -d /run/systemd/system ]]
}

# --- Debian packages -----------------------------------------------------

needed_packages() {
    if is_raspberry_pi; then
        # The camera stack and OpenCV from apt, built against the system's
        # libcamera and numpy.
        echo python3-picamera2 python3-opencv python3-numpy python3-yaml \
            python3-venv
    else
        # OpenCV comes as the headless wheel (about 50 MB) unless python3-opencv
        # is already installed: the apt package pulls in GTK, Qt, FFmpeg and
        # VTK, several hundred megabytes a kiosk never uses.
        echo python3-numpy python3-yaml python3-venv
    fi
}

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_packages() {
    local package missing=()
    for package in $(needed_packages); do
        is_installed "$package" || missing+=("$package")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        say "Debian packages already installed"
        return
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q \
        || fail "apt-get update failed: check the network or the apt sources"
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || fail "could not install ${missing[*]} with apt-get"
}

# --- the virtual environment -------------------------------------------------

system_python_version() {
    python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

system_numpy_version() {
    # Read from the package metadata: importing numpy takes seconds on a
    # small Pi.
    python3 -c 'from importlib.metadata import version; print(version("numpy"))' \
        2>/dev/null || fail "the system python3 has no numpy (package python3-numpy)"
}

system_has_opencv() {
    python3 -c \
        'import importlib.util, sys; sys.exit(not importlib.util.find_spec("cv2"))'
}

venv_is_usable() {
    [[ -x $VENV/bin/python ]] || return 1
    grep -q "^include-system-site-packages = true" "$VENV/pyvenv.cfg" || return 1
    local version
    version=$("$VENV/bin/python" -c \
        'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || return 1
    [[ $version == "$(system_python_version)" ]]
}

make_venv() {
    if venv_is_usable; then
        say "virtual environment $VENV is in place"
        return
    fi
    say "creating the virtual environment $VENV"
    rm -rf "$VENV"
    install -d -m 0755 "$PREFIX"
    python3 -m venv --system-site-packages "$VENV" \
        || fail "python3 -m venv failed (package python3-venv)"
}

write_constraints() {
    local numpy_version
    numpy_version=$(system_numpy_version)
    if [[ $runtime == tflite-runtime ]]; then
        check_tflite_runtime_fits "$numpy_version"
    fi
    {
        echo "# Written by deploy/install.sh: pip must keep the system's numpy,"
        echo "# which OpenCV and Picamera2 from apt are built against."
        echo "numpy==$numpy_version"
    } >"$CONSTRAINTS.tmp"
    mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"
}

check_tflite_runtime_fits() {
    local python_version
    python_version=$(system_python_version)
    if [[ ${1%%.*} -ge 2 ]]; then
        fail "tflite-runtime 2.14 needs numpy 1 but this system has numpy $1:" \
            "use --runtime litert"
    fi
    if [[ ${python_version#3.} -gt 11 ]]; then
        fail "tflite-runtime has no build for Python $python_version:" \
            "use --runtime litert"
    fi
}

python_requirements() {
    if [[ $runtime == litert ]]; then
        echo ai-edge-litert
    else
        echo tflite-runtime
    fi
    if ! is_raspberry_pi && ! system_has_opencv; then
        echo opencv-python-headless
    fi
}

copy_project_source() {
    # pip builds in the folder it is given: build from a copy so no
    # root-owned build files are left in the checkout.
    local copy=$1 item
    for item in pyproject.toml README.md LICENSE pi_classifier; do
        if [[ -e $SOURCE_DIR/$item ]]; then
            cp -r "$SOURCE_DIR/$item" "$copy/"
        fi
    done
    [[ -f $copy/pyproject.toml ]] || fail "no pyproject.toml in $SOURCE_DIR"
}

python_inputs_digest() {
    # Everything pip would install from: a rerun with the same digest has
    # nothing to do (pip itself takes long to start on a small Pi).
    {
        echo "runtime $runtime"
        cat "$CONSTRAINTS"
        python_requirements
        if [[ -n $wheels ]]; then
            stat -c '%n %s %Y' "$wheels"/*.whl
        else
            (cd "$SOURCE_DIR" && find pyproject.toml pi_classifier -type f \
                ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum)
        fi
    } | sha256sum | cut -d' ' -f1
}

pip_install() {
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
        --no-cache-dir --quiet --constraint "$CONSTRAINTS" "$@"
}

install_python_packages() {
    local project index_options=() build digest
    write_constraints
    digest=$(python_inputs_digest)
    if [[ -f $PACKAGES_STAMP && $(cat "$PACKAGES_STAMP") == "$digest" ]]; then
        say "Python packages in $VENV are up to date"
        return
    fi
    if [[ -n $wheels ]]; then
        index_options=(--no-index --find-links "$wheels")
        project=$NAME
    else
        build=$(mktemp -d)
        temporary_dirs+=("$build")
        copy_project_source "$build"
        project=$build
    fi
    say "installing $NAME and $(python_requirements | paste -sd' ') into $VENV"
    # shellcheck disable=SC2046 # one requirement a line, no spaces
    pip_install "${index_options[@]}" "$project" $(python_requirements) \
        || fail "pip could not install $NAME and its runtime (see above)"
    # The same version number may carry new code: always replace the project
    # itself, never its dependencies.
    pip_install "${index_options[@]}" --no-deps --force-reinstall "$project" \
        || fail "pip could not reinstall $NAME (see above)"
    check_python_packages
    echo "$digest" >"$PACKAGES_STAMP"
}

check_python_packages() {
    local module numpy_path
    module=ai_edge_litert.interpreter
    [[ $runtime == litert ]] || module=tflite_runtime.interpreter
    "$VENV/bin/python" -c "import cv2, yaml, $module, pi_classifier" \
        || fail "the installed packages do not import together (see above)"
    numpy_path=$("$VENV/bin/python" -c 'import numpy; print(numpy.__file__)')
    if [[ $numpy_path == "$VENV"/* ]]; then
        fail "pip put its own numpy in $VENV, over the system's:" \
            "remove $VENV and run again"
    fi
    "$VENV/bin/pi-classifier" --version >/dev/null \
        || fail "$VENV/bin/pi-classifier does not run"
}

# --- what the installer changed, so --uninstall can undo exactly that ---------

record() {
    install -d -m 0755 "$PREFIX"
    grep -qxF -- "$*" "$RECORD" 2>/dev/null || echo "$*" >>"$RECORD"
}

recorded() {
    [[ -f $RECORD ]] && grep -qxF -- "$*" "$RECORD"
}

recorded_values() {
    [[ -f $RECORD ]] || return 0
    awk -v kind="$1" '$1 == kind { print $2 }' "$RECORD"
}

# --- user, folders and files ---------------------------------------------

make_user() {
    local group
    for group in "${SERVICE_GROUPS[@]}"; do
        if ! getent group "$group" >/dev/null; then
            groupadd --system "$group"
            record group-created "$group"
        fi
    done
    if ! getent passwd "$NAME" >/dev/null; then
        say "creating the system user $NAME"
        useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "pi-classifier service" "$NAME"
        record user-created "$NAME"
    fi
    for group in "${SERVICE_GROUPS[@]}"; do
        if ! id -nG "$NAME" | tr ' ' '\n' | grep -qx "$group"; then
            usermod --append --groups "$group" "$NAME"
        fi
    done
}

make_folders() {
    install -d -m 0755 "$CONFIG_DIR"
    install -d -o "$NAME" -g "$NAME" -m 0750 "$STATE_DIR" "$MODEL_DIR"
    chown -R "$NAME:$NAME" "$MODEL_DIR"
}

install_config() {
    local default=$SOURCE_DIR/config/pi-classifier.yaml
    [[ -f $default ]] || fail "the default config $default is missing"
    if [[ ! -e $CONFIG ]] || cmp -s "$CONFIG" "$SHIPPED_CONFIG"; then
        # New, or still the default of an earlier install: take the new one.
        install -m 0640 -g "$NAME" "$default" "$CONFIG"
        rm -f "$CONFIG.new"
        say "installed the default config $CONFIG"
    elif cmp -s "$CONFIG" "$default"; then
        rm -f "$CONFIG.new"
    elif ! cmp -s "$CONFIG.new" "$default"; then
        install -m 0640 -g "$NAME" "$default" "$CONFIG.new"
        say "kept your edited $CONFIG;" \
            "the new default is beside it as config.yaml.new"
    fi
    install -m 0644 "$default" "$SHIPPED_CONFIG"
}

known_model_check() {
    # Prints the known name of FILE when its name is a known file name (the
    # pins live in pi_classifier/models.py); prints why and fails when its
    # bytes do not match that file's pinned SHA-256.
    "$VENV/bin/python" - "$1" <<'PYTHON'
import sys
from pathlib import Path
from pi_classifier.models import KNOWN_MODELS, is_verified

path = Path(sys.argv[1])
for known in KNOWN_MODELS.values():
    if known.filename == path.name:
        if not is_verified(path, known):
            print(f"{path} does not match the known SHA-256 of {known.filename}")
            sys.exit(1)
        print(known.name)
PYTHON
}

install_given_file() {
    local file=$1 known
    known=$(known_model_check "$file") || fail "$known"
    if [[ -z $known ]]; then
        say "$file is not a known file: installing it unchecked"
    fi
    if ! cmp -s "$file" "$MODEL_DIR/$(basename "$file")"; then
        install -m 0644 -o "$NAME" -g "$NAME" "$file" "$MODEL_DIR/"
        say "installed $MODEL_DIR/$(basename "$file")"
    fi
}

install_model() {
    local file
    for file in "$model_file" "$labels_file"; do
        [[ -z $file ]] || install_given_file "$file"
    done
    # fetch-model checks the files already there against their SHA-256 and
    # downloads only what is missing or damaged, so this needs no network
    # once the model is in place.
    runuser -u "$NAME" -- env PI_CLASSIFIER_MODEL_DIR="$MODEL_DIR" \
        "$VENV/bin/pi-classifier" --quiet fetch-model "$DEFAULT_MODEL" >/dev/null \
        || fail "could not get the model $DEFAULT_MODEL: without internet," \
            "give the files with --model FILE --labels FILE"
    say "model $DEFAULT_MODEL is in $MODEL_DIR"
}

# --- kiosk console: no blanking, no cursor, no login prompt on the screen ----

cmdline_has() {
    tr ' ' '\n' <"$CMDLINE" | grep -qxF -- "$1"
}

add_cmdline_args() {
    [[ -f $CMDLINE ]] || return 0
    local arg
    for arg in "${KIOSK_CMDLINE_ARGS[@]}"; do
        if ! cmdline_has "$arg"; then
            sed -i "1s/[[:space:]]*\$/ $arg/" "$CMDLINE"
            record cmdline "$arg"
            say "added $arg to $CMDLINE (takes effect at the next boot)"
        fi
    done
}

remove_cmdline_args() {
    local arg pattern
    for arg in $(recorded_values cmdline); do
        pattern=${arg//./\\.}
        if [[ -f $CMDLINE ]]; then
            sed -i "1s/ $pattern\\( \\|\$\\)/\\1/" "$CMDLINE"
        fi
    done
}

mask_gettys() {
    local unit state
    for unit in "${KIOSK_MASKED_UNITS[@]}"; do
        state=$(systemctl is-enabled "$unit" 2>/dev/null || true)
        if [[ $state != masked ]]; then
            systemctl mask --quiet "$unit"
            record masked "$unit"
        fi
    done
}

unmask_gettys() {
    local unit
    for unit in $(recorded_values masked); do
        systemctl unmask --quiet "$unit" || true
    done
}

install_kiosk() {
    install -m 0644 "$SCRIPT_DIR/$KIOSK_SERVICE" "$UNIT_DIR/$KIOSK_SERVICE"
    add_cmdline_args
    mask_gettys
}

# --- the service ---------------------------------------------------------

install_service() {
    local unit=$SOURCE_DIR/systemd/$SERVICE
    [[ -f $unit ]] || fail "the unit file $unit is missing"
    if [[ -f $SOURCE_DIR/README.md ]]; then
        # The unit's Documentation= points here.
        install -m 0644 "$SOURCE_DIR/README.md" "$PREFIX/README.md"
    fi
    install -m 0644 "$unit" "$UNIT_DIR/$SERVICE"
    install_web_lan
    if systemd_running; then
        systemctl daemon-reload
    fi
    systemctl enable --quiet "$KIOSK_SERVICE" "$SERVICE"
}

# Without --web-lan an installed drop-in stays: running the script again
# keeps what an earlier run was asked for.
install_web_lan() {
    local drop_in=$SOURCE_DIR/systemd/examples/$WEB_LAN_DROP_IN
    [[ $web_lan == yes ]] || return 0
    [[ -f $drop_in ]] || fail "the drop-in $drop_in is missing"
    install -d -m 0755 "$DROP_IN_DIR"
    install -m 0644 "$drop_in" "$DROP_IN_DIR/$WEB_LAN_DROP_IN"
    say "the web view may be reached from private networks" \
        "($DROP_IN_DIR/$WEB_LAN_DROP_IN)"
}

start_service() {
    if [[ $start == no ]]; then
        say "enabled $SERVICE; it starts at the next boot (--no-start)"
        return
    fi
    if ! systemd_running; then
        say "enabled $SERVICE; systemd is not running here," \
            "so it starts at the next boot"
        return
    fi
    systemctl restart "$KIOSK_SERVICE"
    say "starting $SERVICE (loading the model takes a few seconds)"
    systemctl restart "$SERVICE" \
        || fail "$SERVICE did not start: see journalctl -u $NAME -b"
    say "$SERVICE is running: $(systemctl show -p StatusText --value "$SERVICE")"
}

install_all() {
    install_packages
    make_venv
    install_python_packages
    make_user
    make_folders
    install_config
    install_model
    install_kiosk
    install_service
    start_service
}

# --- uninstall -------------------------------------------------------------

remove_units() {
    local unit
    if systemd_running; then
        systemctl stop "$SERVICE" "$KIOSK_SERVICE" 2>/dev/null || true
    fi
    for unit in "$SERVICE" "$KIOSK_SERVICE"; do
        if [[ -f $UNIT_DIR/$unit ]]; then
            systemctl disable --quiet "$unit" || true
            rm -f "$UNIT_DIR/$unit"
        fi
    done
    # Drop-ins someone else wrote there stay, with their folder.
    rm -f "$DROP_IN_DIR/$WEB_LAN_DROP_IN"
    rmdir "$DROP_IN_DIR" 2>/dev/null || true
    unmask_gettys
    remove_cmdline_args
    if systemd_running; then
        systemctl daemon-reload
    fi
}

remove_user() {
    local group
    if recorded user-created "$NAME" && getent passwd "$NAME" >/dev/null; then
        userdel "$NAME"
    fi
    if recorded user-created "$NAME" && getent group "$NAME" >/dev/null; then
        groupdel "$NAME"
    fi
    for group in $(recorded_values group-created); do
        groupdel "$group" 2>/dev/null || true
    done
}

uninstall_all() {
    say "removing $SERVICE, $VENV, the user $NAME and the kiosk settings"
    remove_units
    remove_user
    rm -rf "$PREFIX"
    if [[ $purge == yes ]]; then
        rm -rf "$CONFIG_DIR" "$STATE_DIR"
        say "removed $CONFIG_DIR and $STATE_DIR"
        return
    fi
    if [[ -d $STATE_DIR ]]; then
        # The user is gone: leave no files owned by a number nobody has.
        chown -R root:root "$STATE_DIR"
    fi
    say "kept $CONFIG_DIR and $MODEL_DIR (--purge removes them)"
}

main() {
    parse_args "$@"
    check_args
    check_machine "$@"
    trap 'on_error "$BASH_COMMAND" "$LINENO"' ERR
    trap remove_temporary_dirs EXIT
    if [[ $action == uninstall ]]; then
        uninstall_all
    else
        install_all
    fi
}

main "$@"
