"""Oracle backends: the synthetic dataset's ground truth served through the parser and detector contracts.

They let every stage, the runner and the demo run on CPU in seconds with known-correct outputs, and
they are the reference that the real networks are compared against on the synthetic set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OracleParser:
    """Returns the ground-truth LIP label map of each image (`root/truth/parse/<path>.png`)."""

    label_set = "lip"

    def __init__(self, root: Path | str):
        if root is None:
            raise ValueError("oracle parser: the manifest has no root to read the ground truth from")
        self.root = Path(root)

    def one(self, path: str) -> np.ndarray:
        """The label map of one image (path relative to root); raises if its truth file is missing."""
        from deskpro.synthetic.generator import read_parse_truth

        return np.asarray(read_parse_truth(self.root, path), dtype=np.uint8)


class OracleFaceDetector:
    """Returns the ground-truth face of each image (from `root/truth/faces.parquet`) as detections.

    The true face gets score 1.0; an image without one gets no detection. The stage's face policy
    still applies, so the oracle exercises the same selection path as the real detectors.
    """

    def __init__(self, root: Path | str):
        from deskpro.synthetic.generator import read_face_truth

        if root is None:
            raise ValueError("oracle detector: the manifest has no root to read the ground truth from")
        self.root = Path(root)
        self.truth = read_face_truth(self.root)

    def one(self, path: str) -> list:
        """The detections (0 or 1 Face) of one image; raises KeyError if the truth has no entry."""
        from deskpro.pipeline.detection import Face

        if path not in self.truth:
            raise KeyError(f"{path}: no entry in {self.root / 'truth' / 'faces.parquet'}")
        has_face, box, landmarks = self.truth[path]
        if not has_face:
            return []
        box = np.asarray(box, np.float32).reshape(4)
        return [Face(box=box, score=1.0, landmarks=np.asarray(landmarks, np.float32).reshape(5, 2))]
