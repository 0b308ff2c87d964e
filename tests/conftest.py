"""Settings for the whole test session: deskpro's disk cache in a temporary folder, not the home's."""

import atexit
import os
import shutil
import tempfile

# Set before any test (and inherited by the commands tests run): ONNX exports of random test
# networks must not pile up in ~/.cache/deskpro.
os.environ["DESKPRO_CACHE"] = tempfile.mkdtemp(prefix="deskpro-test-cache-")
atexit.register(shutil.rmtree, os.environ["DESKPRO_CACHE"], ignore_errors=True)
