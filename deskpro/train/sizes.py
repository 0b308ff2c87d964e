"""Whether a checkpoint fits a shard set's image sizes: the check evaluate and visualize share."""

from __future__ import annotations


def check_sizes(model, reader, checkpoint_path) -> None:
    """A checkpoint of ours runs only on shards of the sizes it was trained at (ValueError otherwise):
    a model trained on 64x32 bodies gives meaningless features on 384x128 ones. Official files do
    not record their sizes and are not checked."""
    config = (getattr(model, "checkpoint_meta", None) or {}).get("config") or {}
    trained = {"body": config.get("body_size"), "face": config.get("face_size")}
    packed = {"body": reader.options.get("body_size"), "face": reader.options.get("face_size")}
    for what in ("body", "face"):
        if trained[what] is None or packed[what] is None:
            continue
        if _size(trained[what]) != _size(packed[what]):
            raise ValueError(
                f"{checkpoint_path}: trained on {_size(trained[what])} {what} images, but "
                f"{reader.shards_dir} holds {_size(packed[what])}; pack the shards at the checkpoint's "
                f"sizes (deskpro pack --body-size / --face-size) or evaluate a checkpoint trained on them"
            )


def _size(value) -> str:
    return "x".join(str(int(v)) for v in value) if isinstance(value, (list, tuple)) else f"{int(value)}px"
