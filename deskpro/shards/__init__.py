"""Training shards: the contract between the preprocessing pipeline and the trainer.

The pipeline's stages end in `pack`, which writes a shard directory; the trainer and the evaluator
only ever read shard directories. Everything both sides must agree on lives here, and
``docs/formats.md`` writes it down:

- `format`: file names, FORMAT_VERSION, the index schema, the HDF5 attributes, the shard catalog
  (``catalog.json``) and its checksum, ShardError;
- `writer`: ShardWriter (HDF5 shards, index.parquet, catalog.json, all written atomically);
- `reader`: ShardReader (random access, decoded on the CPU, safe in DataLoader workers);
- `verify`: the cheap layout check every reader runs and the full hash check (`deskpro verify`);
- `pack`: a work directory's manifest and stage outputs -> shards.
"""

from deskpro.shards.format import CATALOG_NAME, FORMAT_VERSION, INDEX_NAME, ShardError
from deskpro.shards.reader import ShardReader
from deskpro.shards.verify import ShardReport, verify, verify_or_raise
from deskpro.shards.writer import ShardWriter

__all__ = [
    "CATALOG_NAME",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "ShardError",
    "ShardReader",
    "ShardReport",
    "ShardWriter",
    "verify",
    "verify_or_raise",
]
