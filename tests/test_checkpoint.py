"""Checkpoints: the official DeSKPro layout and teacher files load; ours round-trip with weights_only=True."""

from __future__ import annotations

import pytest
import torch
from _model_utils import CLASS_COUNT_OFFICIAL, images, random_state, reference_shapes, tie_aliases

from deskpro.config import TrainConfig
from deskpro.model import DeSKPro, LightMBN
from deskpro.model.checkpoint import (
    CheckpointError,
    load,
    load_teacher,
    load_with_meta,
    preprocessing_constants,
    read_teacher,
    save,
)

SMALL_CLASSES = 4


@pytest.fixture(scope="module")
def official_state():
    shapes = reference_shapes("deskpro_keys.json", "deskpro_celeb_reid_632ids")
    return tie_aliases(random_state(shapes, seed=3))


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, official_state):
    path = tmp_path_factory.mktemp("official") / "deskpro_celeb.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in official_state.items()}}, path)
    return path


def test_official_layout_loads_with_every_key(official_file, official_state):
    model = load(official_file)
    assert isinstance(model, DeSKPro) and not model.training
    assert model.num_classes == CLASS_COUNT_OFFICIAL
    own = model.state_dict()
    assert set(own) == set(official_state)
    for key in (
        "nocloth_net.spatial_attn.conv1.weight",
        "lr_face_net.part_branch.reduction_3.classifier.weight",
        "face_net.backbone.0.conv.weight",
        "nocloth_net.branches.2.shared.0.weight",
    ):
        assert torch.equal(own[key], official_state[key])
    with torch.no_grad():
        emb = model.embed(images(2, 64, 32), images(2, 32, 32, seed=1))
    assert emb["body"].shape == (2, 7, 512) and emb["face"].shape == (2, 7, 512)
    assert torch.isfinite(emb["body"]).all() and torch.isfinite(emb["face"]).all()


def test_missing_official_key_is_listed(tmp_path, official_state):
    broken = dict(official_state)
    del broken["nocloth_net.spatial_attn.conv2.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": broken}, path)
    with pytest.raises(
        CheckpointError, match=r"broken\.pth.*missing \[nocloth_net\.spatial_attn\.conv2\.weight\]"
    ):
        load(path)


def test_teacher_file_initialises_the_teacher(tmp_path, official_state):
    teacher = {
        "model.face_net." + k[len("face_net.") :]: v
        for k, v in official_state.items()
        if k.startswith("face_net.")
    }
    path = tmp_path / "celeb_teacher.pth"
    torch.save({"state_dict": teacher}, path)
    with pytest.raises(CheckpointError, match="teacher-only.*load_teacher"):
        load(path)
    info = read_teacher(path)
    assert (info.source, info.class_pids, info.class_order) == ("official", None, "official")
    model = DeSKPro(CLASS_COUNT_OFFICIAL)
    load_teacher(model, info)
    key = "global_branch.batch_drop_block.drop_batch_bottleneck.conv3.conv.weight"
    assert torch.equal(model.face_net.state_dict()[key], official_state["face_net." + key])
    with pytest.raises(CheckpointError, match="632 classes"):
        load_teacher(DeSKPro(SMALL_CLASSES), path)


def test_not_a_checkpoint_gives_a_clear_error(tmp_path):
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"readme\.txt"):
        load(text)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match=r"resnet\.pth: not a DeSKPro checkpoint"):
        load(other)
    with pytest.raises(CheckpointError, match="no such"):
        load(tmp_path / "absent.pth")


class _Payload:  # a pickled object that weights_only=True refuses
    pass


def test_pickled_objects_need_trust(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "cfg": _Payload()}, path)
    with pytest.raises(
        CheckpointError,
        match=r"pickled\.pth: cannot be read as a checkpoint: holds Python objects.*--trust-checkpoint",
    ):
        load(path)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(4)
    model = DeSKPro(SMALL_CLASSES)
    model.train()
    with torch.no_grad():  # move BN running statistics off their defaults
        model(images(4, 64, 32, seed=2), images(4, 32, 32, seed=3), images(4, 32, 32, seed=4))
    return model.eval()


def test_our_checkpoint_round_trip(tmp_path, small_model):
    config = TrainConfig.for_dataset("prcc").to_dict()
    prep = preprocessing_constants((64, 32), 32)
    path = save(
        tmp_path / "run" / "model.pt",
        small_model,
        config=config,
        num_classes=SMALL_CLASSES,
        preprocessing=prep,
        class_pids=[10, 2, 7, 3],
        extra={"epoch": 3},
    )
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format_version"] == 1 and raw["num_classes"] == SMALL_CLASSES
    assert raw["class_pids"] == [10, 2, 7, 3]
    model, meta = load_with_meta(path)
    assert meta["config"] == config and meta["preprocessing"] == prep and meta["extra"] == {"epoch": 3}
    assert meta["class_pids"] == [10, 2, 7, 3]
    assert TrainConfig.from_dict(meta["config"]) == TrainConfig.for_dataset("prcc")
    body, face = images(3, 64, 32, seed=8), images(3, 32, 32, seed=9)
    with torch.no_grad():
        a, b = small_model.embed(body, face), model.embed(body, face)
    assert torch.equal(a["body"], b["body"]) and torch.equal(a["face"], b["face"])
    assert list(tmp_path.joinpath("run").iterdir()) == [path]  # no temporary left behind


def test_our_teacher_checkpoint_and_bad_metadata(tmp_path):
    torch.manual_seed(5)
    teacher = LightMBN(SMALL_CLASSES).eval()
    path = save(
        tmp_path / "teacher.pt",
        teacher,
        config={"phase": "teacher"},
        num_classes=SMALL_CLASSES,
        preprocessing=preprocessing_constants(),
        class_pids=[4, 3, 2, 1],
    )
    assert isinstance(load(path), LightMBN)
    info = read_teacher(path)
    assert (info.source, info.num_classes, info.class_pids) == ("ours", SMALL_CLASSES, [4, 3, 2, 1])
    model = DeSKPro(SMALL_CLASSES)
    load_teacher(model, path)
    x = images(2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.face_net.eval()(x), teacher(x))
    with pytest.raises(TypeError, match="config.method"):
        save(
            tmp_path / "bad.pt",
            teacher,
            config={"method": object()},
            num_classes=SMALL_CLASSES,
            preprocessing=preprocessing_constants(),
            class_pids=[0, 1, 2, 3],
        )
    with pytest.raises(ValueError, match="class_pids must list the pid of each of the 4 classes"):
        save(tmp_path / "bad.pt", teacher, config={}, num_classes=4, preprocessing=preprocessing_constants())
    with pytest.raises(ValueError, match="preprocessing lacks"):
        save(
            tmp_path / "bad.pt",
            teacher,
            config={},
            num_classes=SMALL_CLASSES,
            preprocessing={},
            class_pids=[0, 1, 2, 3],
        )


def test_a_baseline_checkpoint_is_not_a_teacher(tmp_path, small_model):
    config = TrainConfig.for_dataset("prcc", phase="baseline").to_dict()
    path = save(
        tmp_path / "baseline.pt",
        small_model,
        config=config,
        num_classes=SMALL_CLASSES,
        preprocessing=preprocessing_constants(),
        class_pids=[0, 1, 2, 3],
    )
    with pytest.raises(
        CheckpointError, match=r"baseline\.pt: a baseline checkpoint .*untrained.*train-teacher"
    ):
        read_teacher(path)
    with pytest.raises(CheckpointError, match="a baseline checkpoint"):
        load_teacher(DeSKPro(SMALL_CLASSES), path)


def test_a_narrow_backbone_survives_the_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DeSKPro(SMALL_CLASSES, backbone="osnet_x0_25").eval()
    config = TrainConfig.for_dataset("synthetic").to_dict()
    path = save(
        tmp_path / "narrow.pt",
        model,
        config=config,
        num_classes=SMALL_CLASSES,
        preprocessing=preprocessing_constants((64, 32), 32),
        class_pids=[1, 2, 3, 4],
    )
    loaded, _ = load_with_meta(path)
    assert loaded.backbone_name == "osnet_x0_25"
    assert loaded.nocloth_net.spatial_attn is not None and loaded.nocloth_net.trunk_channels == 96
    body, face = images(2, 64, 32, seed=1), images(2, 32, 32, seed=2)
    with torch.no_grad():
        assert torch.equal(model.embed(body, face)["body"], loaded.embed(body, face)["body"])
