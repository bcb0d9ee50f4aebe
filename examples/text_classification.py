"""A transformers pipeline on OpenVINO: record, export, verify, and classify again on the exported graph.

Runs offline as is, on a tiny random BERT (``shapetrace.testing.text_classification_pipeline``); any
``transformers.pipeline("text-classification", model=...)`` works the same. Usage:
``python examples/text_classification.py [OUT_DIR]`` (default ``examples-out/text_classification``).
"""

import sys
from pathlib import Path

import shapetrace
from shapetrace.testing import text_classification_pipeline

out = Path(sys.argv[1] if len(sys.argv) > 1 else "examples-out/text_classification")
classifier = text_classification_pipeline()

with shapetrace.record(classifier) as recording:
    classifier("chef in the kitchen")
print(recording)

result = shapetrace.export_all(classifier, out, overwrite=True, progress=False)
print(result)
print(result.parity.summary())

texts = ["a chef cooking in the kitchen", "a dog", "an old man walking on the beach with a small dog"]
reference = classifier(texts, batch_size=3)
with shapetrace.load(classifier, out) as runtime:  # batch 3 and another length than recorded
    answers = classifier(texts, batch_size=3)
print(runtime.summary())
for text, got, ref in zip(texts, answers, reference):
    print(f"{text!r:52} openvino {got['label']} {got['score']:.6f}   torch {ref['label']} {ref['score']:.6f}")
