#!/usr/bin/env bash
# Set up (if needed) and run the main job: 2 Blender instances stream the cube scene.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/blendtorch-ray demo "$@"
