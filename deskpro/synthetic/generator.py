"""A seeded synthetic cloth-changing re-id dataset in the PRCC layout, with ground truth.

`generate(root)` draws pedestrians (numpy + OpenCV, see `appearance.py`, `figure.py`, `draw.py`)
where identity is carried by face, hair colour and style, skin tone, height, build and shoes, and
clothes change across cameras: cameras A and B show a val or test person in one outfit, camera C
in another whose upper garment has a clearly different colour (PRCC's protocol); a training
person wears a third outfit at camera B, so that clothes explain no identity in training.
Garments come from one wardrobe shared by all people (fewer garments than people), so different
people wear the same clothes. About 15% of
images show no face (back views, or an umbrella in front of the head). Faces are small (about
1/10 of the image height).

Written under ROOT:
  rgb/{train,val}/PID/{A,B,C}_KKK.jpg and rgb/test/{A,B,C}/PID/KKK.jpg   (JPEG q92, RGB content)
  truth/parse/<image path, suffix .png>   LIP label map (uint8, image size): background 0, hair 2,
                        upper-clothes 5, dress 6, coat 7, pants 9, skirt 12, face 13 (with the
                        neck), arms 14/15, legs 16/17, shoes 18/19 (left/right: the person's own)
  truth/face_hr/<image path, suffix .png>   for each image with a face: the clean render of the
                        same scene at hr_scale times the image size (no low-resolution capture, blur
                        or noise; the camera's colour cast and brightness kept), a square RGB crop
                        around the face (its box grown HR_CROP_GROWTH times); black outside the image
  truth/faces.parquet   path, pid, camera, view, has_face, box [4] (x1,y1,x2,y2), landmarks [10]
                        (x,y of image-left eye, right eye, nose, left/right mouth), hr_origin [2]
                        (x,y of the face_hr crop's top-left pixel in the enlarged image) and hr_scale:
                        image point p lies at (p + 0.5) * hr_scale - 0.5 - hr_origin in the crop
                        (pixel centres are integers); all null when no face
  synthetic.json        the options it was made with (written last: marks a complete dataset)

Defaults: 120 identities split 60 train / 20 val / 40 test (PRCC-like proportions, disjoint),
3 images per camera (1,080 images of 384x128): small enough for the demo to preprocess and train
in minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from deskpro.common.images import encode_jpeg, encode_png
from deskpro.manifests.schema import ManifestError
from deskpro.synthetic import appearance, draw
from deskpro.synthetic.appearance import Identity, Outfit, View
from deskpro.synthetic.figure import FaceTruth, Window

# 2: shared wardrobe, shoes and wider body cues belong to the person; 3: face_hr; 4: a third outfit
# for the training identities (camera B)
FORMAT_VERSION = 4
CAMERAS = ("A", "B", "C")
NO_FACE_RATE = 0.15
JPEG_QUALITY = 92
MARKER = "synthetic.json"
HR_CROP_GROWTH = 2.2  # face_hr side / the face box's longer side: holds the GPEN-aligned face
INCOMPLETE = ".synthetic-incomplete"
FACES_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("pid", pa.int64()),
        ("camera", pa.string()),
        ("view", pa.string()),
        ("has_face", pa.bool_()),
        ("box", pa.list_(pa.float32(), 4)),
        ("landmarks", pa.list_(pa.float32(), 10)),
        ("hr_origin", pa.list_(pa.float32(), 2)),
        ("hr_scale", pa.float32()),
    ]
)


def split_sizes(identities: int) -> dict[str, int]:
    """Identities per split in PRCC-like proportions: val 1/6, test 1/3, train the rest (about 1/2)."""
    if identities < 3:
        raise ValueError(
            f"synthetic dataset needs at least 3 identities (train, val, test), got {identities}"
        )
    val = max(1, round(identities / 6))
    test = max(1, round(identities / 3))
    return {"train": identities - val - test, "val": val, "test": test}


def image_path(split: str, pid: int, camera: str, k: int, width: int = 3) -> str:
    """The PRCC-layout path of image `k` of person `pid` under `camera`, relative to root."""
    person = f"{pid:0{width}d}"
    if split == "test":
        return f"rgb/test/{camera}/{person}/{k:03d}.jpg"
    return f"rgb/{split}/{person}/{camera}_{k:03d}.jpg"


def generate(
    root: str | os.PathLike,
    *,
    identities: int = 120,
    images_per_camera: int = 3,
    image_size: tuple[int, int] = (384, 128),
    seed: int = 0,
    hr_scale: int = 4,
    train_outfits: int = 3,
    progress: bool = True,
) -> Path:
    """Generate the dataset into `root` and return it; a no-op when `root` already holds the same one.

    `train_outfits`: outfits of a training identity, 3 (a third outfit at camera B: clothes explain
    no identity in training) or 2 (PRCC's protocol in training too, A and B in one outfit: clothes
    explain most of it, the trap of `worlds.CLOTHES_TRAP`).

    Refuses (ManifestError) a non-empty `root` that is not a synthetic dataset, or one made with
    other options. An interrupted generation (marker file left behind) is started over.
    """
    root = Path(root)
    options = {
        "format_version": FORMAT_VERSION,
        "identities": int(identities),
        "images_per_camera": int(images_per_camera),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "seed": int(seed),
        "hr_scale": int(hr_scale),
    }
    if train_outfits != 3:  # only when not the default, so that sets made before still match
        options["train_outfits"] = int(train_outfits)
    if _existing_matches(root, options):
        return root
    sizes = split_sizes(identities)
    bad_sizes = images_per_camera < 1 or min(image_size) < 32 or not 1 <= hr_scale <= 16
    if bad_sizes or train_outfits not in (2, 3):
        raise ValueError(
            "need images_per_camera >= 1, image sides >= 32, hr_scale in [1, 16] and train_outfits 2 or 3, "
            f"got {images_per_camera}, {image_size}, {hr_scale}, {train_outfits}"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / INCOMPLETE).touch()
    faces = _write_images(root, sizes, options, progress)
    pq.write_table(pa.Table.from_pylist(faces, schema=FACES_SCHEMA), root / "truth" / "faces.parquet")
    counts = {"images": len(faces), "split_identities": sizes}
    (root / MARKER).write_text(json.dumps({**options, **counts}, indent=2) + "\n")
    (root / INCOMPLETE).unlink()
    return root


def is_complete(root: str | os.PathLike) -> bool:
    """True when `root` holds a completely generated synthetic dataset."""
    root = Path(root)
    return (root / MARKER).is_file() and not (root / INCOMPLETE).exists()


def _existing_matches(root: Path, options: dict) -> bool:
    """True when `root` already holds this dataset; clears an interrupted one; refuses others."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    if (root / INCOMPLETE).exists():
        for leftover in ("rgb", "truth"):
            shutil.rmtree(root / leftover, ignore_errors=True)
        return False
    marker = root / MARKER
    if marker.is_file():
        made = json.loads(marker.read_text())
        made_options = {k: made.get(k) for k in options}
        if made_options != options:
            raise ManifestError(f"{root}: holds a synthetic dataset made with {made_options}, not {options}")
        return True
    if any(root.iterdir()):
        raise ManifestError(f"{root}: folder is not empty and holds no synthetic dataset ({MARKER} missing)")
    return False


def _write_images(root: Path, sizes: dict[str, int], options: dict, progress: bool) -> list[dict]:
    seed, per_camera, hr_scale = options["seed"], options["images_per_camera"], options["hr_scale"]
    size = tuple(options["image_size"])
    width = max(3, len(str(sum(sizes.values()))))
    backgrounds = {
        cam: draw.camera_background(cam, size, np.random.default_rng([seed, 1, i]))
        for i, cam in enumerate(CAMERAS)
    }
    people = _assign_pids(sizes)
    wardrobe = appearance.sample_wardrobe(
        np.random.default_rng([seed, 4]), *appearance.wardrobe_size(sum(sizes.values()))
    )
    faces = []
    bar = tqdm(
        total=len(people) * len(CAMERAS) * per_camera, desc="synthetic", unit="img", disable=not progress
    )
    for split, pid in people:
        person_rng = np.random.default_rng([seed, 2, pid])
        ident = appearance.sample_identity(person_rng)
        outfits = appearance.sample_outfits(person_rng, wardrobe)
        # Training identities change clothes at every camera (as on Celeb-reID, where few images of
        # a person share an outfit), so that clothes cannot explain who is who in training; the val
        # and test identities keep PRCC's protocol (A and B: one outfit, C: another). Drawn last, so
        # the val and test images do not change.
        by_camera = {"A": outfits[0], "B": outfits[0], "C": outfits[1]}
        if split == "train" and options.get("train_outfits", 3) == 3:
            by_camera["B"] = appearance.extra_outfit(person_rng, wardrobe, outfits)
        for cam_index, camera in enumerate(CAMERAS):
            outfit = by_camera[camera]
            for k in range(per_camera):
                rng = np.random.default_rng([seed, 3, pid, cam_index, k])
                view = appearance.sample_view(rng, NO_FACE_RATE)
                image, labels, face, hr = render_image(
                    ident, outfit, view, camera, backgrounds[camera], size, rng, hr_scale
                )
                rel = image_path(split, pid, camera, k, width)
                _write_pair(root, rel, image, labels)
                if hr is not None:
                    _write_file(face_hr_file(root, rel), encode_png(hr[0]))
                faces.append(_face_row(rel, pid, camera, view.facing, face, None if hr is None else hr[1]))
                bar.update()
    bar.close()
    return faces


def render_image(
    ident: Identity,
    outfit: Outfit,
    view: View,
    camera: str,
    background: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    hr_scale: int,
) -> tuple[np.ndarray, np.ndarray, FaceTruth | None, tuple[np.ndarray, Window] | None]:
    """draw.draw_person's (image, labels, face), and for a face its clean high-resolution crop and
    where that lies (None without a face). The crop replays a copy of `rng`: the image is the one
    draw_person alone gives."""
    replay = copy.deepcopy(rng)
    image, labels, face = draw.draw_person(ident, outfit, view, camera, background, size, rng)
    if face is None:
        return image, labels, None, None
    window = face_window(face.box, hr_scale)
    crop, _, _ = draw.draw_person(
        ident, outfit, view, camera, background, size, replay, window, camera_effects=False
    )
    return image, labels, face, (crop, window)


def face_window(box: np.ndarray, scale: int) -> Window:
    """The face_hr square of a face box (image pixels): the box grown HR_CROP_GROWTH times, same centre."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(1, round(HR_CROP_GROWTH * max(x2 - x1, y2 - y1) * scale))
    cx, cy = ((x1 + x2) / 2 + 0.5) * scale - 0.5, ((y1 + y2) / 2 + 0.5) * scale - 0.5
    x0, y0 = round(cx - (side - 1) / 2), round(cy - (side - 1) / 2)
    return Window(scale=scale, x0=x0, y0=y0, width=side, height=side)


def _assign_pids(sizes: dict[str, int]) -> list[tuple[str, int]]:
    """Person ids 1..N, consecutive blocks per split: train, val, test."""
    out, pid = [], 1
    for split in ("train", "val", "test"):
        for _ in range(sizes[split]):
            out.append((split, pid))
            pid += 1
    return out


def _write_pair(root: Path, rel: str, image: np.ndarray, labels: np.ndarray) -> None:
    try:
        jpg, png = encode_jpeg(image, JPEG_QUALITY), encode_png(labels)
    except ValueError as exc:
        raise RuntimeError(f"{rel}: {exc}") from None
    _write_file(root / rel, jpg)
    _write_file(root / "truth" / "parse" / Path(rel).with_suffix(".png"), png)


def _write_file(file: Path, data: bytes) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)


def _face_row(
    rel: str, pid: int, camera: str, facing: str, face: FaceTruth | None, window: Window | None
) -> dict:
    return {
        "path": rel,
        "pid": pid,
        "camera": camera,
        "view": facing,
        "has_face": face is not None,
        "box": None if face is None else face.box.tolist(),
        "landmarks": None if face is None else face.landmarks.reshape(-1).tolist(),
        "hr_origin": None if window is None else [float(window.x0), float(window.y0)],
        "hr_scale": None if window is None else float(window.scale),
    }


# ---- reading the ground truth


def read_parse_truth(root: str | os.PathLike, path: str) -> np.ndarray:
    """The LIP label map (uint8 [H,W]) of the image at `path` (relative to `root`)."""
    file = Path(root) / "truth" / "parse" / Path(path).with_suffix(".png")
    labels = cv2.imread(str(file), cv2.IMREAD_UNCHANGED) if file.is_file() else None
    if labels is None:
        raise FileNotFoundError(f"{file}: no readable parse ground truth for {path}")
    return labels


def face_hr_file(root: str | os.PathLike, path: str) -> Path:
    """Where the clean high-resolution face crop of the image at `path` is stored."""
    return Path(root) / "truth" / "face_hr" / Path(path).with_suffix(".png")


def read_face_hr(root: str | os.PathLike, path: str) -> np.ndarray:
    """The clean high-resolution face crop (RGB uint8 [S,S,3]) of the image at `path`."""
    file = face_hr_file(root, path)
    bgr = cv2.imread(str(file), cv2.IMREAD_COLOR) if file.is_file() else None
    if bgr is None:
        raise FileNotFoundError(f"{file}: no readable high-resolution face truth for {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def read_face_hr_placement(root: str | os.PathLike) -> dict[str, tuple[np.ndarray, float]]:
    """path -> (hr_origin float32 (2,), hr_scale) of every image with a face (see the module doc)."""
    file = _faces_file(root)
    if "hr_origin" not in pq.read_schema(file).names:
        raise ValueError(f"{file}: no hr_origin column (made before format 3); generate the dataset again")
    table = pq.read_table(file, columns=["path", "hr_origin", "hr_scale"]).to_pydict()
    return {
        path: (np.array(origin, np.float32), float(scale))
        for path, origin, scale in zip(table["path"], table["hr_origin"], table["hr_scale"])
        if origin is not None
    }


def _faces_file(root: str | os.PathLike) -> Path:
    file = Path(root) / "truth" / "faces.parquet"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no face ground truth (not a synthetic dataset?)")
    return file


def read_face_truth(root: str | os.PathLike) -> dict[str, tuple[bool, np.ndarray, np.ndarray]]:
    """path -> (has_face, box float32 (4,), landmarks float32 (5,2)); box and landmarks are NaN
    when the image shows no face."""
    table = pq.read_table(_faces_file(root), columns=["path", "has_face", "box", "landmarks"]).to_pydict()
    out = {}
    for path, has_face, box, landmarks in zip(
        table["path"], table["has_face"], table["box"], table["landmarks"]
    ):
        if has_face:
            out[path] = (True, np.array(box, np.float32), np.array(landmarks, np.float32).reshape(5, 2))
        else:
            out[path] = (False, np.full(4, np.nan, np.float32), np.full((5, 2), np.nan, np.float32))
    return out
