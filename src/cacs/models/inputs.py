"""The scoring networks' input normalisation, shared by training, prediction and the model bundle."""

from __future__ import annotations

HU_CLIP = (-1024.0, 3071.0)
HU_SCALE = 1000.0  # network input = clip(HU) / 1000: soft tissue ~0, calcium 0.13..3
