#!/usr/bin/env bash
# Quick start on Debian with Python 3.11:
#   ./dev.sh run  [twistd artifactvault options]   sets up .venv and runs the daemon
#   ./dev.sh test [trial arguments]                sets up everything and runs all tests
set -euo pipefail
cd "$(dirname "$0")"
VENV=${AV_VENV:-.venv}

apt_install() { # PACKAGE... -> installs the missing ones (needs root)
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  echo "dev.sh: installing ${missing[*]} with apt-get" >&2
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

python_for_venv() { # -> the interpreter the venv is made from
  # $AV_PYTHON if set; else the distribution's own python3 when it is 3.11 or
  # newer (Debian builds it with PGO and LTO: the vault's reactor spent 11-16%
  # less CPU on a burst of cold misses on it than on an unoptimized build such
  # as pyenv's default, docs/benchmarks.md), even where another python3 comes
  # first on the PATH;
  # else python3.
  if [[ -n ${AV_PYTHON:-} ]]; then
    echo "$AV_PYTHON"
  elif /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo /usr/bin/python3
  else
    echo python3
  fi
}

setup() { # EXTRAS -> a venv with the project installed (editable) and its dependencies
  local python; python=$(python_for_venv)
  "$python" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  [[ -x $VENV/bin/python ]] || "$python" -m venv "$VENV"
  local made wanted  # (a venv made earlier with another interpreter is kept: say so)
  made=$(sed -n 's/^home = //p' "$VENV/pyvenv.cfg" 2>/dev/null)
  # (as venv writes it: the directory of the interpreter behind a shim or a symlinked name)
  wanted=$("$python" -c 'import os, sys; print(os.path.dirname(getattr(sys, "_base_executable", sys.executable)))')
  [[ -z $made || $made == "$wanted" ]] ||
    echo "dev.sh: $VENV was made with the Python in $made, not $python (remove $VENV to make it again)" >&2
  local stamp=$VENV/.installed-$1
  if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e ".$1" --config-settings editable_mode=compat
    touch "$stamp"
  fi
}

cmd=${1:-}; shift || true
case $cmd in
  run)
    setup ""
    exec "$VENV/bin/twistd" -n --pidfile= artifactvault "$@" ;;
  test)
    # curl for the upstream scripts; nginx, the registry and skopeo for the
    # real upstreams and clients the integration tests drive; apt-utils
    # (apt-ftparchive), dpkg-dev, gnupg, gpgv and xz-utils for the signed
    # Debian repository of the apt backend's tests (tests/upstreams/apt-up);
    # Ceph (a mon, an OSD and its RADOS Gateway) for the S3 store's
    # (tests/upstreams/s3-up); chromium to look at the status page as a
    # person would (headless); apache2-utils for htpasswd -B (the files client auth reads).
    apt_install curl nginx-light docker-registry skopeo apt-utils dpkg-dev gnupg gpgv xz-utils apache2-utils \
      ceph-mon ceph-osd radosgw chromium
    # Node.js, npm, verdaccio, yarn and pnpm (from the npm registry) for the npm backend's tests.
    tests/upstreams/npm-kit-install
    setup "[test]"
    exec "$VENV/bin/trial" "${@:-tests}" ;;
  *)
    echo "usage: $0 run [twistd artifactvault options] | test [trial arguments]" >&2; exit 2 ;;
esac
