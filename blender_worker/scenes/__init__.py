"""Scenes bundled with blendtorch-ray (Blender-side scripts)."""

import os

CUBE = os.path.join(os.path.dirname(__file__), "cube.py")
