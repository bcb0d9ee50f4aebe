"""A call with exactly the recorded sizes is always accepted by load(): for every exported graph of every offline
example, the recorded example call goes through the served graph's checks (bind, match, dtypes, static dims, tied
dims, derived dims, constraints) without a runtime behind it."""

import dataclasses

import pytest
import torch

from shapetrace import constraints
from shapetrace._export.flat import module_for
from shapetrace._record.recording import dtype_from_name
from shapetrace._serve.serve import ServedGraph
from shapetrace.testing import EXAMPLES


class _NoRunner:
    """The checks never reach the runner; inference would."""

    def infer(self, feed):
        raise AssertionError("the checks must not run the graph")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "sdxl" else n for n in EXAMPLES])
def test_the_recorded_call_passes_every_served_check(exports, name):  # SDXL's export: make test-slow
    obj, rec, _, result = exports.get(name)
    entries = [e for e in result.manifest.graphs if e.ok]
    assert entries, str(result)
    for entry in entries:
        g = rec.graphs[entry.name]
        served = ServedGraph(entry, module_for(obj, g), _NoRunner(), "openvino", static_shapes=False)
        args, kwargs = g.example_inputs()
        nodes, leaves = served.bind(args, kwargs)
        feed, _ = served.match(nodes, leaves)  # raises RuntimeMismatchError naming what it refuses
        assert set(feed) == set(entry.input_names), entry.name
        for spec in entry.inputs:  # the sizes checked are the recorded ones, not something rebuilt
            assert tuple(feed[spec.name].shape) == tuple(spec.example_shape), (entry.name, spec.name)


def _feed(entry, sizes):
    """Zero tensors of every input at ``sizes`` (the named dims), in the recorded dtypes."""
    feed = {}
    for spec in entry.inputs:
        shape = [sizes[d] if isinstance(d, str) else d for d in spec.shape]
        feed[spec.name] = torch.zeros(shape, dtype=dtype_from_name(spec.dtype))
    return feed


def test_a_constraint_false_at_the_recorded_sizes_never_refuses_the_recorded_call(exports):
    # a guard derived at another size than the recorded one (torch.export traces size-1 dims at 2) or mistranslated
    # can read false at the very sizes the graph was exported, run and verified at: the recorded call still passes,
    # other sizes are still checked against it
    obj, rec, _, result = exports.get("text-classification")
    entry = next(e for e in result.manifest.graphs if e.ok and e.dims)
    recorded = {n: d.example for n, d in entry.dims.items()}
    dim = max(recorded, key=recorded.get)
    bogus = f"({dim} % 7) == {(recorded[dim] + 1) % 7}"
    entry = dataclasses.replace(entry, constraints=tuple(entry.constraints) + (bogus,))
    g = rec.graphs[entry.name]
    served = ServedGraph(entry, module_for(obj, g), _NoRunner(), "openvino", static_shapes=False)
    assert bogus in constraints.check(served.constraints, recorded, served.dims)  # it is checked, and false here
    served.match(*served.bind(*g.example_inputs()))  # accepted all the same
    assert served._check_tensors(_feed(entry, recorded)) == []
    smaller = dict(recorded, **{dim: recorded[dim] - 1})  # breaks it: refused, naming it
    assert constraints.check(tuple(entry.constraints[:-1]), smaller, served.dims) == []
    problems = served._check_tensors(_feed(entry, smaller))
    assert len(problems) == 1 and bogus in problems[0], problems
