"""Settings for the whole test session: deskpro's disk cache in a temporary folder, not the home's;
thread counts that do not follow the machine's load."""

import atexit
import os
import shutil
import tempfile

import pytest

from deskpro.common import threads

# Set before any test (and inherited by the commands tests run): ONNX exports of random test
# networks must not pile up in ~/.cache/deskpro.
os.environ["DESKPRO_CACHE"] = tempfile.mkdtemp(prefix="deskpro-test-cache-")
atexit.register(shutil.rmtree, os.environ["DESKPRO_CACHE"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _threads_ignore_the_machines_load(monkeypatch):
    """Thread counts as on an idle machine, in every test.

    Tests compare training runs for exact equality, and the thread count sets the rounding of float
    sums; a count that followed whatever else runs beside the suite would make them flaky. How the
    count follows the load is tested in test_threads.py, with given and faked loads.
    """
    monkeypatch.setattr(threads, "free_cores", lambda affinity=None: len(affinity or os.sched_getaffinity(0)))
