"""Oracle backends: the synthetic dataset's ground truth, served through the parser, detector and
restorer contracts.

They let every stage, the runner and the demo run on CPU in seconds with known-correct outputs, and
they are the reference that the real networks are compared against on the synthetic set. They return
plain arrays (this layer sits below the pipeline): deskpro.pipeline.backends turns them into Faces
and aligned restored faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deskpro.manifests.schema import sample_id_of
from deskpro.synthetic.generator import (
    read_face_hr,
    read_face_hr_placement,
    read_face_truth,
    read_parse_truth,
)


class OracleParser:
    """Returns the ground-truth LIP label map of each image (`root/truth/parse/<path>.png`)."""

    label_set = "lip"

    def __init__(self, root: Path | str | None):
        if root is None:
            raise ValueError("oracle parser: the manifest has no root to read the ground truth from")
        self.root = Path(root)

    def one(self, path: str) -> np.ndarray:
        """The label map of one image (path relative to root); raises if its truth file is missing."""
        return np.asarray(read_parse_truth(self.root, path), dtype=np.uint8)


class OracleFaceDetector:
    """Returns the ground-truth face of each image (from `root/truth/faces.parquet`) as detections.

    The true face gets score 1.0; an image without one gets no detection. The stage's face policy
    still applies, so the oracle exercises the same selection path as the real detectors.
    """

    def __init__(self, root: Path | str | None):
        if root is None:
            raise ValueError("oracle detector: the manifest has no root to read the ground truth from")
        self.root = Path(root)
        self.truth = read_face_truth(self.root)

    def one(self, path: str) -> list[tuple[np.ndarray, float, np.ndarray]]:
        """(box [4], score, landmarks [5, 2]) of the 0 or 1 true face; KeyError if the truth has no entry."""
        if path not in self.truth:
            raise KeyError(f"{path}: no entry in {self.root / 'truth' / 'faces.parquet'}")
        has_face, box, landmarks = self.truth[path]
        if not has_face:
            return []
        return [
            (np.asarray(box, np.float32).reshape(4), 1.0, np.asarray(landmarks, np.float32).reshape(5, 2))
        ]


class OracleRestorer:
    """Returns the generator's clean high-resolution render of each face (`root/truth/face_hr/<path>.png`):
    what a perfect restorer would give, with detail that the low-resolution image has lost.
    """

    def __init__(self, root: Path | str | None):
        if root is None:
            raise ValueError("oracle restorer: the manifest has no root to read the ground truth from")
        self.root = Path(root)
        self.placement = read_face_hr_placement(self.root)
        self.paths = {sample_id_of(p): p for p in read_face_truth(self.root)}

    def path_of(self, sample_id: str) -> str:
        """The image path of a manifest sample id (the path without suffix); KeyError if it has none."""
        if sample_id not in self.paths:
            raise KeyError(f"{sample_id}: no entry in {self.root / 'truth' / 'faces.parquet'}")
        return self.paths[sample_id]

    def one(self, path: str, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(HR crop RGB uint8 [S,S,3], `landmarks` (5, 2), original-image pixels, mapped into the crop).

        KeyError when the truth has no face for `path`; FileNotFoundError naming the missing crop file.
        """
        if path not in self.placement:
            raise KeyError(f"{path}: no face_hr placement in {self.root / 'truth' / 'faces.parquet'}")
        origin, scale = self.placement[path]
        crop = read_face_hr(self.root, path)
        points = np.asarray(landmarks, np.float64).reshape(5, 2)
        return crop, ((points + 0.5) * scale - 0.5 - origin).astype(np.float32)
