"""The deployment process of tests/test_deploy.py: a fresh interpreter that never saw the exported objects.

``python tests/_deploy_child.py SPEC.json``: SPEC lists ``[case, export folder, load_pipeline options, result
folder]``; for each, the object is rebuilt with ``shapetrace.load_pipeline``, run once on the case's second call,
and its output written to ``result/output.npz`` / ``output.json``, with ``result/facts.json``: which graph ran where,
and whether every parameter of every served module was on the meta device.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import _deploy_cases
import shapetrace
from shapetrace._core.walker import parse_path, resolve
from shapetrace.manifest import read


def main(spec: str) -> None:
    warnings.simplefilter("ignore")
    for case, folder, options, result in json.loads(Path(spec).read_text()):
        result = Path(result)
        result.mkdir(parents=True, exist_ok=True)
        obj = shapetrace.load_pipeline(folder, **options)
        runtime = shapetrace.runtime_of(obj)
        with torch.no_grad():
            output = _deploy_cases.CASES[case][2](obj)
        stats = [[s.graph, s.ran_on, s.calls] for s in runtime.stats()]
        runtime.close()  # the modules' own classes back: their parameters as they are
        modules = {e.module for e in read(folder).exported}
        params = {m: [p.device.type for p in resolve(obj, parse_path(m))[2].parameters()] for m in modules}
        got = _deploy_cases.comparable(output)
        if "text" in got:
            (result / "output.json").write_text(json.dumps(got["text"]))
        else:
            np.savez(result / "output.npz", *(got.get("tensors") or [got["images"]]))
        (result / "facts.json").write_text(json.dumps({"stats": stats, "devices": params, "kind": next(iter(got)),
                                                       "class": f"{type(obj).__module__}:{type(obj).__qualname__}"}))


if __name__ == "__main__":
    main(sys.argv[1])
