"""OpenVINO GenAI's WhisperPipeline on shapetrace's export, offline: record a tiny Whisper speech-recognition pipeline
(random weights) on one audio clip, export with genai=True, and transcribe clips of other lengths with the genai/
folder -- raw 16 kHz audio in, text out, GenAI computing the features itself -- against PyTorch's generate.

    .venv/bin/python examples/genai_whisper.py [OUT]
"""

import sys
import warnings

import numpy as np
import openvino_genai as og

import shapetrace
from shapetrace.testing import speech_recognition_pipeline

warnings.simplefilter("ignore")
out = sys.argv[1] if len(sys.argv) > 1 else "genai-whisper-out"


def clip(seed, samples):  # noise at 16 kHz: the tiny model's chunk is one second
    return np.random.default_rng(seed).standard_normal(samples).astype(np.float32) * 0.1


asr = speech_recognition_pipeline()
with shapetrace.record(asr):
    asr(clip(0, 16000), generate_kwargs=dict(max_new_tokens=5))
result = shapetrace.export_all(asr, out, overwrite=True, progress=False, genai=True)
print(result)


class Tokens(og.StreamerBase):  # the ids GenAI generates, as they come
    def __init__(self):
        super().__init__()
        self.ids = []

    def write(self, token):
        self.ids += token if isinstance(token, list) else [token]
        return og.StreamingStatus.RUNNING

    def end(self):
        pass


pipe = og.WhisperPipeline(f"{out}/genai", "CPU", INFERENCE_PRECISION_HINT="f32")  # f32, as the export's own IR
for samples in (12000, 7000):
    audio = clip(samples, samples)
    features = asr.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    want = asr.model.generate(features, max_new_tokens=20, do_sample=False)[0].tolist()
    streamer = Tokens()
    text = pipe.generate(audio.tolist(), max_new_tokens=20, streamer=streamer).texts[0]
    print(f"{samples} samples: GenAI {text!r}")
    print(f"{' ' * len(str(samples))}          PyTorch {asr.tokenizer.decode(want, skip_special_tokens=True)!r}, "
          f"tokens identical: {streamer.ids == want}")
