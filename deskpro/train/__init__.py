"""Training and evaluation from shards: data (dataset, P x K sampler), batch augmentation, the
lr schedule, the training loop (teacher / DeSKPro / baseline) and re-id evaluation.

Submodules are imported on use (`deskpro.train.loop`, `deskpro.train.evaluate`, ...) so that
importing the package stays cheap.
"""
