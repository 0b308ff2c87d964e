"""Oracle backends: the synthetic dataset's ground truth, served through the parser and detector contracts.

They let every stage, the runner and the demo run on CPU in seconds with known-correct outputs, and
they are the reference that the real networks are compared against on the synthetic set. They return
plain arrays (this layer sits below the pipeline): deskpro.pipeline.backends turns them into Faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deskpro.synthetic.generator import read_face_truth, read_parse_truth


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
