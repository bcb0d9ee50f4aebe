import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _ExportCache:
    """Record + export each offline example once per test session (exports are the slow part)."""

    def __init__(self, root):
        self.root = root
        self.done = {}

    def get(self, name, **export_kwargs):
        import shapetrace
        from shapetrace.testing import EXAMPLES

        key = (name, tuple(sorted(export_kwargs.items())))
        if key not in self.done:
            ex = EXAMPLES[name]
            obj = ex.build()
            with shapetrace.record(obj) as rec:
                ex.run(obj)
            out = self.root / f"{name}-{len(self.done)}"
            result = shapetrace.export_all(obj, out, progress=False, **{"verify": False, **export_kwargs})
            self.done[key] = (obj, rec, out, result)
        return self.done[key]


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """``exports.get("controlnet") -> (obj, recording, out_dir, ExportResult)``; do not modify out_dir in place."""
    return _ExportCache(tmp_path_factory.mktemp("exports"))
