# deskpro on a Ray base image: the same image for the head, the workers and `ray job submit`.
#
#   docker build -t deskpro:cpu .                                   # CPU nodes
#   docker build --build-arg VARIANT=gpu -t deskpro:gpu .           # CUDA nodes (Ray's default CUDA)
#   docker build --build-arg VARIANT=cu128 -t deskpro:cu128 .       # a specific CUDA build of Ray's image
#
# RAY_VERSION must match the Ray that deskpro is tested with (tests/test_cluster.py checks it against
# the installed ray) and the `rayVersion` of a KubeRay RayJob (docs/cluster.md).
ARG RAY_VERSION=2.60.0
ARG PYTHON=py311
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-${VARIANT}

ARG VARIANT=cpu
# CPU images take PyTorch's CPU wheels (about 1.5 GB smaller than the CUDA ones pip picks by default).
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu

WORKDIR /opt/deskpro
COPY --chown=ray:users setup.cfg pyproject.toml README.md ./
COPY --chown=ray:users deskpro ./deskpro
# The cluster extra: ray[default] (dashboard, job server) at the image's own Ray version.
RUN if [ "$VARIANT" = "cpu" ]; then extra="--extra-index-url ${TORCH_INDEX_CPU}"; else extra=""; fi \
    && pip install --no-cache-dir $extra ".[cluster]" \
    && python -c "import deskpro, ray; print('deskpro', deskpro.__version__, 'ray', ray.__version__)"

# Data, weights and work dirs come from one shared volume mounted here on every node.
VOLUME ["/data"]
ENV RAY_USAGE_STATS_ENABLED=0
WORKDIR /data
