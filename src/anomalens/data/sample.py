"""One image of a dataset with its ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """An RGB image (``uint8 H x W x 3``) with its mask (``uint8 H x W``, 1 = defect, zeros for
    good images), label (0 good, 1 defective), category, defect type ("good" for good) and path."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    category: str
    defect_type: str
    path: str
