"""OSNet x1.0 and LightMBN: ImageNet layout loading, output shapes, and which features feed which loss."""

from __future__ import annotations

import copy

import pytest
import torch
from _model_utils import images, random_state, reference_shapes

from deskpro.model.lmbn import NUM_EMBEDDINGS, LightMBN, drop_top_rows_mask
from deskpro.model.osnet import CheckpointError, OSBlock, OSNet, load_imagenet

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    state = random_state(reference_shapes("osnet_keys.json", "osnet_x1_0_imagenet"), seed=1)
    path = tmp_path_factory.mktemp("osnet") / "osnet_x1_0_imagenet.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def lmbn():
    torch.manual_seed(0)  # module init only; inputs use their own generators
    return LightMBN(NUM_CLASSES)


def test_osnet_has_every_imagenet_key_but_the_head():
    ref = set(reference_shapes("osnet_keys.json", "osnet_x1_0_imagenet"))
    own = OSNet().state_dict()
    assert set(own) == {k for k in ref if not k.startswith(("fc.", "classifier."))}


def test_imagenet_weights_load_into_osnet(imagenet_file):
    path, state = imagenet_file
    net = load_imagenet(OSNet(), path)
    own = net.state_dict()
    for key in (
        "conv1.conv.weight",
        "conv3.0.downsample.bn.running_var",
        "conv4.1.gate.fc2.bias",
        "conv5.bn.weight",
    ):
        assert torch.equal(own[key], state[key])


def test_imagenet_weights_reach_trunk_and_every_branch_copy(imagenet_file):
    path, state = imagenet_file
    model = load_imagenet(LightMBN(NUM_CLASSES), path)
    own = model.state_dict()
    assert torch.equal(own["backbone.0.conv.weight"], state["conv1.conv.weight"])
    assert torch.equal(own["backbone.3.conv1.conv.weight"], state["conv3.0.conv1.conv.weight"])
    for branch in ("global_branch", "part_branch", "channel_branch"):
        assert torch.equal(
            own[f"{branch}.backbone2.0.1.conv1.conv.weight"], state["conv3.1.conv1.conv.weight"]
        )
        assert torch.equal(own[f"{branch}.backbone2.0.2.0.conv.weight"], state["conv3.2.0.conv.weight"])
        assert torch.equal(
            own[f"{branch}.backbone2.1.0.conv2d.3.conv2.weight"], state["conv4.0.conv2d.3.conv2.weight"]
        )
        assert torch.equal(own[f"{branch}.backbone2.2.bn.running_mean"], state["conv5.bn.running_mean"])


def test_wrong_imagenet_file_names_file_and_keys(tmp_path, imagenet_file):
    _, state = imagenet_file
    broken = dict(state)
    del broken["conv2.0.conv1.conv.weight"]
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"broken\.pth.*conv2\.0\.conv1\.conv\.weight"):
        load_imagenet(OSNet(), path)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        load_imagenet(OSNet(), text)


def test_branches_are_registered_under_both_names(lmbn):
    assert lmbn.branches[0] is lmbn.global_branch
    assert lmbn.branches[1] is lmbn.part_branch
    assert lmbn.branches[2] is lmbn.channel_branch
    keys = lmbn.state_dict().keys()
    assert "branches.0.reduction_1.classifier.weight" in keys
    assert "global_branch.reduction_1.classifier.weight" in keys


def test_train_and_eval_output_shapes(lmbn):
    x = images(4, 64, 32)
    lmbn.train()
    out = lmbn(x)
    assert out.logits.shape == (4, NUM_EMBEDDINGS, NUM_CLASSES)
    assert out.triplet.shape == (4, 3, 512)
    assert out.embeddings.shape == (4, NUM_EMBEDDINGS, 512)
    lmbn.eval()
    with torch.no_grad():
        emb = lmbn(x)
        full = lmbn(x, full=True)
    assert emb.shape == (4, NUM_EMBEDDINGS, 512)
    assert torch.equal(emb, full.embeddings)
    assert lmbn(images(2, 32, 32), full=False).shape == (2, NUM_EMBEDDINGS, 512)  # face-sized input


def test_triplet_features_are_pre_bn_of_global_drop_and_part_whole(lmbn):
    """Official order: triplet = pre-BN of (global, global-drop, part whole); logits = classifier(post-BN)."""
    lmbn.eval()
    with torch.no_grad():
        out = lmbn(images(3, 64, 32, seed=2), full=True)
        necks = [lmbn.global_branch.reduction_1, lmbn.global_branch.reduction_2, lmbn.part_branch.reduction_1]
        for k, neck in enumerate(necks):
            torch.testing.assert_close(neck.bn(out.triplet[:, k]), out.embeddings[:, k])
        all_necks = necks + [
            lmbn.part_branch.reduction_2,
            lmbn.part_branch.reduction_3,
            lmbn.channel_branch.reduction_ch_0,
            lmbn.channel_branch.reduction_ch_1,
        ]
        for k, neck in enumerate(all_necks):
            torch.testing.assert_close(neck.classifier(out.embeddings[:, k]), out.logits[:, k])


def test_drop_top_rows_mask_zeroes_the_most_active_rows():
    features = torch.zeros(1, 2, 6, 3)
    features[0, :, 4, 1] = 5.0  # strongest row
    features[0, :, 1, 0] = 3.0  # second strongest
    features[0, :, 0, 2] = 0.1
    mask = drop_top_rows_mask(features, h_ratio=0.33)  # round(0.33 * 6) = 2 rows
    assert mask.shape == (1, 1, 6, 1)
    assert mask.flatten().tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]


def test_batch_drop_applies_in_training_only(lmbn):
    block = lmbn.global_branch.batch_drop_block
    x = torch.randn(2, 512, 6, 2, generator=torch.Generator().manual_seed(3))
    block.eval()
    with torch.no_grad():
        dropped, feats = block(x)
    assert torch.equal(dropped, feats)
    block.train()
    with torch.no_grad():
        dropped, feats = block(x)
    zero_rows = (dropped.abs().sum(dim=(1, 3)) == 0).sum(dim=1)
    assert zero_rows.tolist() == [2, 2]


def test_osblock_stream_sum_official_quirk_and_fixed():
    """Official release: gate(conv2a) twice + conv2c + conv2d; deep-person-reid: a + b + c + d."""
    torch.manual_seed(6)
    block = OSBlock(32, 64).eval()
    x = torch.randn(2, 32, 6, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        x1 = block.conv1(x)
        a, b = block.gate(block.conv2a(x1)), block.gate(block.conv2b(x1))
        c, d = block.gate(block.conv2c(x1)), block.gate(block.conv2d(x1))
        identity = block.downsample(x)
        torch.testing.assert_close(block(x), torch.relu(block.conv3(a + b + c + d) + identity))
        block.repeat_conv2a = True
        torch.testing.assert_close(block(x), torch.relu(block.conv3(a + a + c + d) + identity))


def _official_osblock_forward(block: OSBlock, x: torch.Tensor) -> torch.Tensor:
    """The official OSBlock.forward (`model/osnet.py:186-198`), written out: conv2a called twice."""
    x1 = block.conv1(x)
    x2 = block.gate(block.conv2a(x1)) + block.gate(block.conv2a(x1))
    x2 = x2 + block.gate(block.conv2c(x1)) + block.gate(block.conv2d(x1))
    return torch.relu(block.conv3(x2) + block.downsample(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_repeat_conv2a_updates_running_statistics_as_two_official_calls(momentum):
    torch.manual_seed(8)
    block = OSBlock(32, 64, repeat_conv2a=True)
    gen = torch.Generator().manual_seed(9)
    for m in block.modules():  # running statistics away from their initial values
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
            m.running_mean.normal_(generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.num_batches_tracked.fill_(3)
    official, once = copy.deepcopy(block), copy.deepcopy(block).train()
    x = torch.randn(4, 32, 8, 4, generator=gen) * 3 + 1
    ours_out, official_out = block.train()(x), _official_osblock_forward(official.train(), x)
    torch.testing.assert_close(ours_out, official_out, rtol=0, atol=0)
    ours_out.square().sum().backward()  # the extra update must not upset autograd's saved tensors
    official_out.square().sum().backward()
    torch.testing.assert_close(block.conv2a.conv1.weight.grad, official.conv2a.conv1.weight.grad)
    bn = block.conv2a.bn
    assert int(bn.num_batches_tracked) == 5 and int(block.conv2c[0].bn.num_batches_tracked) == 4
    for (key, mine), (_, theirs) in zip(block.state_dict().items(), official.state_dict().items()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=key)
    once.conv2a(once.conv1(x))  # a single update (deskpro before): the comparison above tells it apart
    assert float((once.conv2a.bn.running_mean - bn.running_mean).abs().max()) > 1e-2
    # evaluation leaves the statistics alone
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with torch.no_grad():
        block.eval()(x)
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())


def test_repeat_conv2a_reaches_every_block_including_batch_drop():
    blocks = [m for m in LightMBN(NUM_CLASSES).modules() if isinstance(m, OSBlock)]
    assert blocks and all(b.repeat_conv2a for b in blocks)
    assert not any(p.requires_grad for b in blocks for p in b.conv2b.parameters())
    blocks = [m for m in LightMBN(NUM_CLASSES, repeat_conv2a=False).modules() if isinstance(m, OSBlock)]
    assert not any(b.repeat_conv2a for b in blocks)
    assert all(p.requires_grad for b in blocks for p in b.conv2b.parameters())


# ---- narrower variants (deep-person-reid's osnet_x0_75 / x0_5 / x0_25)


def test_narrow_variants_have_the_x1_0_keys_with_scaled_widths():
    from deskpro.model.osnet import BACKBONES

    wide = OSNet().state_dict()
    for name, channels in BACKBONES.items():
        narrow = OSNet(name=name).state_dict()
        assert set(narrow) == set(wide), name
        assert narrow["conv1.conv.weight"].shape == (channels[0], 3, 7, 7)
        assert narrow["conv5.bn.weight"].shape == (channels[3],)
        assert narrow["conv3.0.conv3.bn.weight"].shape == (channels[2],)
    assert BACKBONES["osnet_x0_25"] == (16, 64, 96, 128)  # deep-person-reid's osnet_x0_25 widths


def test_narrow_lightmbn_keeps_the_seven_embeddings_and_the_feature_size():
    model = LightMBN(NUM_CLASSES, backbone="osnet_x0_25")
    assert model.backbone_name == "osnet_x0_25" and model.trunk_channels == 96
    assert model.channel_branch.chunk == 64
    out = model.train()(images(4, 64, 32, seed=5))
    assert out.logits.shape == (4, NUM_EMBEDDINGS, NUM_CLASSES)
    assert out.embeddings.shape == (4, NUM_EMBEDDINGS, 512)
    narrow = sum(p.numel() for p in model.parameters())
    assert narrow < sum(p.numel() for p in LightMBN(NUM_CLASSES).parameters()) / 5


def test_imagenet_file_of_another_width_is_refused_by_name(imagenet_file):
    path, _ = imagenet_file
    with pytest.raises(CheckpointError, match=r"osnet_x1_0_imagenet\.pth.*wrong shapes for osnet_x0_25"):
        load_imagenet(LightMBN(NUM_CLASSES, backbone="osnet_x0_25"), path)
    with pytest.raises(ValueError, match=r"unknown backbone 'osnet_x2'.*osnet_x0_25"):
        OSNet(name="osnet_x2")


def test_cli_lists_every_backbone():
    from deskpro.cli.train import BACKBONE_NAMES
    from deskpro.model.osnet import BACKBONES

    assert BACKBONE_NAMES == tuple(BACKBONES)
