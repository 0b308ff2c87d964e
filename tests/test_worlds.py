"""The synthetic worlds as controlled designs: the clothes trap changes only what training people
wear (their A and B images share an outfit, C another); test people and every identity cue are the
tour world's, image for image."""

from __future__ import annotations

from collections import defaultdict

import cv2
import numpy as np
import pytest

from deskpro.manifests import scan
from deskpro.synthetic import generator
from deskpro.synthetic.worlds import CLOTHES_TRAP, TOUR, world

UPPER_LABELS = [5, 6, 7]


def _upper_mean(root, path) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(root / path)), cv2.COLOR_BGR2RGB).astype(np.float32)
    labels = generator.read_parse_truth(root, path)
    return image[np.isin(labels, UPPER_LABELS)].mean(axis=0)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    made = {}
    for design in (TOUR, CLOTHES_TRAP):
        root = tmp_path_factory.mktemp(design.name)
        generator.generate(root, **design.generator_options(9, 2, (128, 64), 3), progress=False)
        made[design.name] = root
    return made


def test_the_trap_dresses_training_people_as_prcc_and_changes_nothing_else(worlds) -> None:
    tour, trap = worlds["tour"], worlds["clothes-trap"]
    rows = scan("synthetic", trap).to_pylist()
    train = [r for r in rows if r["path"].startswith("rgb/train/")]
    assert train and len(train) < len(rows)
    for r in rows:  # val and test images and every camera-A / C training image are the tour's
        same = (tour / r["path"]).read_bytes() == (trap / r["path"]).read_bytes()
        assert same == (r not in train or r["camid"] != 1), r["path"]
    upper = defaultdict(list)
    for r in train:
        upper[(r["pid"], r["camid"])].append(_upper_mean(trap, r["path"]))
    for pid in {r["pid"] for r in train}:
        a, b, c = (np.mean(upper[(pid, cam)], axis=0) for cam in (0, 1, 2))
        # one outfit at A and B (the same garments: only pose and light differ), a clearly different one at C
        assert np.linalg.norm(a - b) < 25 and np.linalg.norm(a - c) > 2 * np.linalg.norm(a - b), pid


def test_world_options_and_names() -> None:
    assert TOUR.generator_options(12, 2, (128, 64), 0)["train_outfits"] == 3
    assert world("clothes-trap") is CLOTHES_TRAP
    with pytest.raises(ValueError, match="--world: unknown world 'x'; known: tour, clothes-trap"):
        world("x")
    with pytest.raises(ValueError, match="train_outfits 2 or 3"):
        generator.generate("/nonexistent-never-written", identities=3, train_outfits=1, progress=False)
