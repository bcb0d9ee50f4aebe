"""``export_all(..., genai=True)`` for speech recognition: a tiny Whisper pipeline recorded on one audio clip;
GenAI's ``WhisperPipeline`` transcribes clips of other lengths, raw audio in and text out, with PyTorch's tokens;
``verify`` checks the folder in GenAI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import shapetrace
from shapetrace.manifest import read

transformers = pytest.importorskip("transformers")
og = pytest.importorskip("openvino_genai")
ov = pytest.importorskip("openvino")


# ------------------------------------------------------------------------------------------------ WhisperPipeline
@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from shapetrace.testing import speech_recognition_pipeline

    asr = speech_recognition_pipeline()
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1  # one 1-second chunk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(asr):
            asr(audio, generate_kwargs=dict(max_new_tokens=5))
        out = tmp_path_factory.mktemp("whisper") / "export"
        result = shapetrace.export_all(asr, out, progress=False, verify=False, genai=True, formats=("openvino",))
    return asr, out, result


def _clip(seed, samples):
    return np.random.default_rng(seed).standard_normal(samples).astype(np.float32) * 0.1


class _Tokens(og.StreamerBase):
    """The token ids GenAI generates, as they come."""

    def __init__(self):
        super().__init__()
        self.tokens = []

    def write(self, token):
        self.tokens += token if isinstance(token, list) else [token]
        return og.StreamingStatus.RUNNING

    def end(self):
        pass


def _torch_transcription(asr, audio, new_tokens, **kw):
    features = asr.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return asr.model.generate(features, max_new_tokens=new_tokens, do_sample=False, **kw)[0].tolist()


def test_the_genai_folder_has_the_layout_whisperpipeline_reads(whisper):
    asr, out, result = whisper
    assert all(result.graphs.values()), str(result)
    note = result.manifest.genai
    assert note == read(out).genai
    assert note["pipeline"] == "WhisperPipeline" and note["graph"] == "model"
    assert note["module_class"] == "WhisperForConditionalGeneration" and note["tokenizer"] == "WhisperTokenizer"
    folder = out / "genai"
    for f in ("openvino_encoder_model.xml", "openvino_encoder_model.bin", "openvino_decoder_model.xml",
              "openvino_decoder_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json",
              "generation_config.json", "preprocessor_config.json"):
        assert (folder / f).is_file() and f in note["files"], f
    core = ov.Core()
    encoder = core.read_model(str(folder / "openvino_encoder_model.xml"))
    assert [p.get_any_name() for p in encoder.inputs] == ["input_features"] == note["encoder_inputs"]
    assert [p.get_any_name() for p in encoder.outputs] == ["last_hidden_state"]
    assert encoder.input("input_features").get_partial_shape()[1].get_length() == 16  # mel bins
    decoder = core.read_model(str(folder / "openvino_decoder_model.xml"))
    assert sorted(p.get_any_name() for p in decoder.inputs) == ["beam_idx", "encoder_hidden_states", "input_ids"]
    assert [p.get_any_name() for p in decoder.outputs] == ["logits"]
    assert decoder.input("beam_idx").get_element_type() == ov.Type.i32
    assert decoder.input("input_ids").get_partial_shape().is_dynamic
    assert sum(op.get_type_name() == "ReadValue" for op in decoder.get_ops()) == 4 == note["states"]  # 2 x k, v
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["is_multilingual"] is False  # no lang_to_id: generate detects no language, nor may GenAI
    assert generation["decoder_start_token_id"] == asr.model.generation_config.decoder_start_token_id
    assert json.loads((folder / "preprocessor_config.json").read_text())["nb_max_frames"] == 100


@pytest.mark.parametrize("samples", [12000, 7000])  # other lengths than the recorded 16000
def test_whisperpipeline_transcribes_other_audio_with_pytorchs_tokens(whisper, samples):
    asr, out, _ = whisper
    pipe = og.WhisperPipeline(str(out / "genai"), "CPU", INFERENCE_PRECISION_HINT="f32")
    audio = _clip(samples, samples)
    want = _torch_transcription(asr, audio, 20)
    assert len(want) == 20 and len(set(want)) > 3  # a real transcription, not one repeated token
    streamer = _Tokens()
    result = pipe.generate(audio.tolist(), max_new_tokens=20, streamer=streamer)  # raw audio in, text out
    assert streamer.tokens == want
    assert result.texts == [asr.tokenizer.decode(want, skip_special_tokens=True)]
    control = asr.model.generation_config
    framed = [control.decoder_start_token_id, control.no_timestamps_token_id, *want, control.eos_token_id]
    assert pipe.get_tokenizer().decode(framed) == result.texts[0]  # the detokenizer skips Whisper's control tokens


def test_whisperpipeline_beam_search_matches_pytorch(whisper):
    asr, out, _ = whisper
    pipe = og.WhisperPipeline(str(out / "genai"), "CPU", INFERENCE_PRECISION_HINT="f32")
    audio = _clip(3, 3000)
    want = _torch_transcription(asr, audio, 12, num_beams=3)  # 3 beams: the decoder's batch 3, its cache reordered
    assert want != _torch_transcription(asr, audio, 12)  # the beams change the answer
    assert pipe.generate(audio.tolist(), max_new_tokens=12, num_beams=3).texts == [
        asr.tokenizer.decode(want, skip_special_tokens=True)]


def test_verify_checks_the_whisper_folder_in_genai(whisper):
    asr, out, _ = whisper
    report = shapetrace.verify(out, asr, write=False, backends=("openvino",))
    row = next(c for c in report.checks if c.backend == "genai")
    assert (row.graph, row.output, row.input_set) == ("genai/", "tokens", "resized")
    assert row.passed, row.message
    assert row.result.shape == (8,) and row.sizes["audio_samples"] != 16000  # another clip than the recorded one


def test_the_whisper_writer_says_what_it_needs(whisper):
    from shapetrace._export.genai import whisper as writer
    from shapetrace._export.genai.common import Target

    asr, out, result = whisper
    with pytest.raises(ValueError, match=r"WhisperPipeline computes the features itself from "
                                         r"preprocessor_config.json, and the object holds no feature extractor"):
        writer.write(asr.model, Target("model", asr.model, {"cache_arg": "cache"}), out / "unused")
    holder = type("Holder", (), {})()
    holder.feature_extractor = asr.feature_extractor
    with pytest.raises(ValueError, match=r"returns text through the converted tokenizer, and the object holds none"):
        writer.write(holder, Target("model", asr.model, {"cache_arg": "cache"}), out / "unused")
