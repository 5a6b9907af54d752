#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite (unit + real Blender/Ray integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian's `blender` (3.4) for tests/test_blender_binary.py and tests/test_doctor.py (idempotent).
if ! command -v blender >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[test] installing Debian's blender package with apt-get (first time: a few minutes)"
  { apt-get update -q && apt-get install -y -q --no-install-recommends blender; } >/tmp/blendtorch-apt-blender.log 2>&1 \
    || echo "[test] apt-get install blender failed (see /tmp/blendtorch-apt-blender.log); binary tests will fail"
fi
# Debian's `xvfb` (a virtual X server) for the interactive-mode tests, tests/test_ui.py (idempotent).
if ! command -v Xvfb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[test] installing Debian's xvfb package with apt-get"
  { apt-get update -q && apt-get install -y -q --no-install-recommends xvfb; } >/tmp/blendtorch-apt-xvfb.log 2>&1 \
    || echo "[test] apt-get install xvfb failed (see /tmp/blendtorch-apt-xvfb.log); the UI tests will be skipped"
fi
# Debian's `openssh-server` (+ client, rsync, iproute2) for tests/test_ray_up.py: `ray up` over SSH on loopback (idempotent).
if { [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1 || ! command -v rsync >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; } \
    && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[test] installing Debian's openssh-server, openssh-client, rsync and iproute2 with apt-get"
  { apt-get update -q && apt-get install -y -q --no-install-recommends openssh-server openssh-client rsync iproute2; } \
    >/tmp/blendtorch-apt-ssh.log 2>&1 \
    || echo "[test] apt-get install openssh-server failed (see /tmp/blendtorch-apt-ssh.log); tests/test_ray_up.py will be skipped"
fi
exec .venv/bin/python -m pytest "${@:--q}"
