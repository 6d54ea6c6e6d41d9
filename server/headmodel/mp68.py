"""Fixed map from MediaPipe's 478 face-mesh points to the iBUG 68-point landmark order."""

from __future__ import annotations

import numpy as np

MP_TO_68: np.ndarray = np.array(
    [
        # 0-16 jaw line, from the subject's right (image left) to their left
        162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
        # 17-21 right brow (outer to inner), 22-26 left brow (inner to outer)
        71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
        # 27-30 nose bridge to tip, 31-35 nostrils right to left
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        # 36-41 right eye (outer corner, upper lid, inner corner, lower lid), 42-47 left eye (inner corner first)
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        # 48-59 outer lip contour from the right corner, 60-67 inner lip contour
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
    ],
    dtype=np.int64,
)
"""(68,) MediaPipe point index for each iBUG-68 landmark. The jaw line maps to MediaPipe's face oval, which sits
a little higher on the cheeks than iBUG's contour; inner and outer lip points agree closely."""

assert MP_TO_68.shape == (68,)
