"""Inference with a trained DeSKPro model: features of raw images, the embed job, search, export.

`FeatureExtractor` (three lines from a checkpoint to features), `run_embed` (`deskpro embed`: a
folder, manifest or shards into a FEATURES table, locally or on Ray), `search` (`deskpro search`:
exact ranking, memory flat in the gallery size), `export_model` (`deskpro export`: ONNX or
TorchScript, checked against the eager model).
"""

from deskpro.inference.extractor import EmbedStage, FeatureExtractor, Features

__all__ = ["EmbedStage", "FeatureExtractor", "Features"]
