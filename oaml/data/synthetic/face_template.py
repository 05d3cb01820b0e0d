"""The standard five-point face alignment template of InsightFace/ArcFace for 112x112 crops.

Aligned face datasets (MS1MV2, CASIA-WebFace as released by InsightFace, LFW/CFP/AgeDB ``.bin`` sets) were
cropped by a similarity transform that maps the detected left eye, right eye, nose tip and mouth corners onto
these five points (``arcface_dst`` in deepinsight/insightface ``face_align.py``). Anything that must land on the
same facial part in every aligned image -- the synthetic renderer and the occluders -- is positioned from this
template, so a sunglasses occluder fits a synthetic face and a real aligned face alike.

Coordinates are pixel positions (x, y) with pixel centres at integer coordinates, the OpenCV/scikit-image
convention the template was made with.
"""

from __future__ import annotations

import numpy as np

TEMPLATE_SIZE = 112
"""Side length in pixels of the image the template below is defined for."""

LEFT_EYE = (38.2946, 51.6963)
RIGHT_EYE = (73.5318, 51.5014)
NOSE_TIP = (56.0252, 71.7366)
MOUTH_LEFT = (41.5493, 92.3655)
MOUTH_RIGHT = (70.7299, 92.2041)

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""Row order of :data:`TEMPLATE_112` ("left" is the image's left side, the subject's right)."""

TEMPLATE_112 = np.array([LEFT_EYE, RIGHT_EYE, NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT], dtype=np.float64)
TEMPLATE_112.setflags(write=False)


def template_landmarks(image_size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Return the five template landmarks (float64 [5, 2], rows in :data:`LANDMARK_NAMES` order) for a square
    aligned crop of side ``image_size``.

    The 112 template is scaled by ``image_size / 112``; this matches InsightFace's ``estimate_norm`` for sizes
    that are multiples of 112. (InsightFace treats 128 differently: it keeps the 112 geometry inside a 128 crop
    with an 8-pixel horizontal shift; that layout is not produced here.)
    """
    if not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return TEMPLATE_112 * (float(image_size) / TEMPLATE_SIZE)
