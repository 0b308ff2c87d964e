"""What --recipe, --teacher-mode and --from-scratch decide (deskpro.train.recipe), without training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _train_utils import FakeReader, write_tiny_shards
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.config import TrainConfig
from deskpro.model.checkpoint import TeacherFile
from deskpro.train import recipe
from deskpro.train.data import ClassTableError, OfficialIdentitySampler, PKBatchSampler


def _config(**kw):
    return TrainConfig.for_dataset("synthetic", **kw)


def test_a_real_dataset_needs_imagenet_weights_or_from_scratch():
    prcc = TrainConfig.for_dataset("prcc", phase="teacher")
    with pytest.raises(ValueError, match=r"^--imagenet: .*osnet_x1_0_imagenet\.pth.*deskpro weights list"):
        recipe.check_init(prcc, None, from_scratch=False)
    recipe.check_init(prcc, "osnet.pth", from_scratch=False)
    recipe.check_init(prcc, None, from_scratch=True)
    recipe.check_init(_config(), None, from_scratch=False)  # the synthetic set may start from scratch


def test_the_cli_stops_without_imagenet_in_one_line(tmp_path):
    shards = write_tiny_shards(tmp_path / "shards", dataset="prcc")
    result = CliRunner().invoke(
        main, ["train-teacher", str(shards), "-o", str(tmp_path / "run"), "--no-progress"]
    )
    assert result.exit_code != 0
    message = result.output.strip().splitlines()
    assert len(message) == 1 and "osnet_x1_0_imagenet.pth" in message[0] and "--from-scratch" in message[0]
    assert not (tmp_path / "run" / "train_state.pt").exists()


def test_official_recipe_drops_faceless_samples_and_their_classes():
    pids = [1, 1, 2, 2, 3, 3, 4, 4]
    has_face = [True, False, False, False, True, True, True, False]  # pid 2: no face at all
    reader = FakeReader(pids, has_face=has_face)
    ours = recipe.train_dataset(reader, _config(phase="deskpro"))
    assert (len(ours), ours.num_classes) == (8, 4)
    official = recipe.train_dataset(reader, _config(phase="deskpro", recipe="official"))
    assert (len(official), official.num_classes) == (4, 3)
    assert official.has_face.all() and official.classes.tolist() == [1, 3, 4]
    # The teacher phase of the deskpro recipe trains on faces but keeps every class.
    teacher = recipe.train_dataset(reader, _config(phase="teacher"))
    assert (len(teacher), teacher.num_classes) == (4, 4)


def test_the_recipe_picks_sampler_amp_and_test_flip():
    labels = np.repeat(np.arange(4), 4)
    assert type(recipe.make_sampler(_config(p=2, k=2), labels)) is PKBatchSampler
    assert type(recipe.make_sampler(_config(p=2, k=2, recipe="official"), labels)) is OfficialIdentitySampler
    official = _config(recipe="official")
    assert recipe.recipe_amp(official, torch.device("cuda"), amp_given=False).amp == "fp16"
    assert recipe.recipe_amp(official, torch.device("cuda"), amp_given=True).amp == "none"
    assert recipe.recipe_amp(official, torch.device("cpu"), amp_given=False).amp == "none"
    assert recipe.recipe_amp(_config(), torch.device("cuda"), amp_given=False).amp == "none"
    assert official.test_flip is False and _config().test_flip is True
    assert TrainConfig.from_dict(official.to_dict()) == official  # the recipe is saved in the config
    with pytest.raises(ValueError, match="--recipe: unknown recipe 'paper'"):
        _config(recipe="paper")
    with pytest.raises(ValueError, match="--teacher-mode"):
        _config(teacher_mode="frozen")


def test_the_attention_target_is_the_official_by_default_and_old_runs_keep_the_paper_reading():
    assert _config().att_target == "official" and _config(recipe="official").att_target == "official"
    paper = _config(att_target="paper")
    assert TrainConfig.from_dict(paper.to_dict()) == paper
    saved_before = {k: v for k, v in _config().to_dict().items() if k != "att_target"}
    assert TrainConfig.from_dict(saved_before).att_target == "paper"  # what those runs trained with
    with pytest.raises(ValueError, match="--att-target: unknown target 'area'"):
        _config(att_target="area")


def _teacher(num_classes, class_pids=None, source="ours"):
    order = "official" if source == "official" else "numeric"
    return TeacherFile(Path("teacher.pt"), source, {}, num_classes, class_pids, order)


def test_a_teacher_fixes_the_class_table_or_is_refused():
    sample_ids = [f"train/{pid}_1_{i}" for i, pid in enumerate([1, 1, 2, 10, 10, 12])]
    reader = FakeReader([1, 1, 2, 10, 10, 12])
    reader.index = reader.index.set_column(0, "sample_id", [sample_ids])
    config = _config(phase="deskpro")
    ours = recipe.train_dataset(reader, config, _teacher(4, [12, 1, 10, 2]))
    assert ours.classes.tolist() == [12, 1, 10, 2] and ours.labels.tolist() == [1, 1, 3, 2, 2, 0]
    official = recipe.train_dataset(reader, config, _teacher(4, source="official"))
    assert official.classes.tolist() == [1, 10, 12, 2]  # the official order: pid strings sorted
    with pytest.raises(
        ClassTableError, match=r"^--teacher teacher\.pt: classes do not match the training set"
    ):
        recipe.train_dataset(reader, config, _teacher(4, [12, 1, 10, 3]))
    with pytest.raises(
        ValueError, match=r"^--teacher teacher\.pt: the teacher has 5 classes, the training set 4"
    ):
        recipe.train_dataset(reader, config, _teacher(5, source="official"))


def test_the_cli_offers_the_recipe_options():
    train = CliRunner().invoke(main, ["train", "--help"]).output
    assert "--recipe [deskpro|official]" in train and "--teacher-mode [train|eval]" in train
    assert "--from-scratch" in train
    teacher = CliRunner().invoke(main, ["train-teacher", "--help"]).output
    # Every TrainConfig field is an option of both commands, so that any run's config.json works as
    # --config; the teacher phase has no teacher, and its help says the option applies to `train`.
    assert "--recipe" in teacher and "--from-scratch" in teacher
    assert "distilling" in teacher.split("--teacher-mode", 1)[1].split("--", 1)[0]


def test_evaluation_flips_unless_the_checkpoint_used_the_official_recipe():
    from types import SimpleNamespace

    from deskpro.train.evaluate import recipe_flip

    def model(config):
        return SimpleNamespace(checkpoint_meta={"config": config})

    assert recipe_flip(model(_config().to_dict())) is True
    assert recipe_flip(model(_config(recipe="official").to_dict())) is False
    assert recipe_flip(model(None)) is True  # an official file: deskpro's default
