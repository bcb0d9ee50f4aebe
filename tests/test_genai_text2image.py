"""``export_all(..., genai=True)`` for text to image: tiny SD 1.5 and SDXL pipelines; GenAI's ``Text2ImagePipeline``
draws PyTorch's image from the same latents; ``verify`` checks the folder in GenAI; pipelines GenAI has no folder
for (ControlNet, image to image) say why."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import shapetrace
from shapetrace.manifest import read

transformers = pytest.importorskip("transformers")
og = pytest.importorskip("openvino_genai")
ov = pytest.importorskip("openvino")


# ------------------------------------------------------------------------------------------------ text to image
T2I_PROMPT = "a photo of a cat on a red chair at night"  # the recording ran on the examples' default prompt
T2I = dict(num_inference_steps=3, guidance_scale=7.0, height=64, width=64)


class _Latents(og.Generator):
    """GenAI's random generator handing out the given initial latents (the one ``randn_tensor`` call a text-to-image
    run makes), so that GenAI and PyTorch start from the same noise."""

    def __init__(self, values):
        super().__init__()
        self.values, self.shapes = values, []

    def next(self):
        raise AssertionError("a text-to-image run draws whole tensors only")

    def randn_tensor(self, shape):
        self.shapes.append(tuple(shape))
        return ov.Tensor(self.values.copy())


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def _torch_image(pipe, prompt, noise):
    """PyTorch's image as GenAI gives it: uint8 HWC (``latents=`` is scaled by the scheduler's init sigma there too)."""
    image = pipe(prompt, latents=noise.clone(), output_type="np", **T2I).images[0]
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def t2i_exported(request, tmp_path_factory):
    from shapetrace.testing.examples import EXAMPLES

    example = EXAMPLES[request.param]
    pipe = example.build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(pipe):
            example.run(pipe)
        out = tmp_path_factory.mktemp(request.param) / "export"
        result = shapetrace.export_all(pipe, out, progress=False, verify=False, genai=True, formats=("openvino",))
    return pipe, out, result


def test_the_text2image_folder_has_the_layout_genai_reads(t2i_exported):
    pipe, out, result = t2i_exported
    assert all(result.graphs.values()), str(result)
    note = result.manifest.genai
    assert note == read(out).genai and note["pipeline"] == "Text2ImagePipeline" and note["graph"] == "unet"
    folder = out / "genai"
    two = "text_encoder_2" in pipe.components
    assert json_load(folder / "model_index.json")["_class_name"] == type(pipe).__name__ == note["class_name"]
    assert json_load(folder / "scheduler" / "scheduler_config.json")["_class_name"] == type(pipe.scheduler).__name__
    parts = ["text_encoder", "unet", "vae_decoder", "vae_encoder"] + ["text_encoder_2"] * two
    for part in parts:
        assert (folder / part / "openvino_model.xml").is_file() and (folder / part / "config.json").is_file(), part
    for tok in ["tokenizer"] + ["tokenizer_2"] * two:
        assert (folder / tok / "openvino_tokenizer.xml").is_file(), tok
    core = ov.Core()
    unet = core.read_model(str(folder / "unet" / "openvino_model.xml"))
    names = sorted(p.get_any_name() for p in unet.inputs)
    assert names == sorted(["sample", "timestep", "encoder_hidden_states"] + ["text_embeds", "time_ids"] * two)
    assert unet.input("timestep").get_element_type() == ov.Type.i64  # what GenAI feeds: i64 [1]
    assert unet.input("timestep").get_partial_shape() == ov.PartialShape([1])
    assert note["parts"]["unet"]["changed"][-1].endswith("-> i64 [1]")  # recorded as a scalar
    encoder = core.read_model(str(folder / "vae_encoder" / "openvino_model.xml"))
    assert [p.get_any_name() for p in encoder.outputs] == ["latent_parameters"]
    if two:  # GenAI reads hidden_states[-2] at output num_hidden_layers + 1
        layers = pipe.text_encoder.config.num_hidden_layers
        te = core.read_model(str(folder / "text_encoder" / "openvino_model.xml"))
        assert te.outputs[layers + 1].get_any_name() == f"hidden_states.{layers - 1}"


def test_text2imagepipeline_draws_pytorchs_image_from_the_same_latents(t2i_exported):
    pipe, out, _ = t2i_exported
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    want = _torch_image(pipe, T2I_PROMPT, noise)
    assert want.std() > 10  # an image, not a flat field
    genai = og.Text2ImagePipeline(str(out / "genai"), "CPU", INFERENCE_PRECISION_HINT="f32")
    latents = _Latents(noise.numpy())
    got = genai.generate(T2I_PROMPT, generator=latents, **T2I).data[0]
    assert latents.shapes == [(1, 4, 8, 8)]  # our noise was the one GenAI drew
    assert got.shape == want.shape and got.dtype == np.uint8
    assert _psnr(got, want) >= 40, _psnr(got, want)
    assert _psnr(got, _torch_image(pipe, "dog", noise)) < 35  # the prompt went through GenAI's tokenizer and encoder


def test_verify_checks_the_text2image_folder_in_genai(t2i_exported):
    pipe, out, _ = t2i_exported
    report = shapetrace.verify(out, pipe, write=False, backends=("openvino",))
    row = next(c for c in report.checks if c.backend == "genai")
    assert (row.graph, row.reference, row.input_set, row.output) == ("genai/", "torch", "new-prompt", "image")
    assert row.passed, row.message
    assert row.sizes["psnr_db"] >= 40 and row.sizes["height"] == row.sizes["width"] == 64
    assert row.result.shape == (64, 64, 3)


def test_an_image_to_image_pipeline_gets_no_text2image_folder():
    from shapetrace._export.genai import text2image
    from shapetrace._export.genai.common import NoGenaiPipeline
    from shapetrace.testing import img2img_pipeline

    with pytest.raises(NoGenaiPipeline, match=r"Text2ImagePipeline draws from a prompt alone; this "
                                              r"StableDiffusionImg2ImgPipeline's call takes an image \(GenAI's "
                                              r"Image2ImagePipeline"):
        text2image.find(img2img_pipeline(), None, [])


def test_a_controlnet_pipeline_exports_the_rest_and_says_why_there_is_no_genai_folder(tmp_path):
    from shapetrace.testing.examples import EXAMPLES

    example = EXAMPLES["controlnet"]
    pipe = example.build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(pipe):
            example.run(pipe)
    with pytest.warns(UserWarning, match=r"no genai/ folder: no GenAI pipeline for this "
                                         r"StableDiffusionControlNetPipeline"):
        result = shapetrace.export_all(pipe, tmp_path, progress=False, verify=False, genai=True,
                                       formats=("openvino",), graphs=["text_encoder", "unet"])  # the rest: alike
    assert sorted(result.graphs) == ["text_encoder", "unet"] and all(result.graphs.values()), str(result)
    assert not (tmp_path / "genai").exists()
    why = read(tmp_path).genai["error"]
    assert "pipeline" not in read(tmp_path).genai
    assert "Text2ImagePipeline takes the components" in why
    assert "this pipeline also has 'controlnet' (ControlNetModel), which GenAI's pipeline would not run" in why
    assert (tmp_path / result.manifest.graph("unet").file("openvino")).is_file()


def json_load(path):
    import json

    return json.loads(path.read_text())


def test_text2image_find_says_which_component_has_no_recorded_graph():
    from shapetrace._export.genai import text2image
    from shapetrace._export.genai.common import NoGenaiPipeline
    from shapetrace.testing.diffusion import sd_pipeline

    with pytest.raises(NoGenaiPipeline, match=r"needs text_encoder\.forward exported, and no successful recorded "
                                              r"graph is of it; record a run of the pipeline that calls it"):
        text2image.find(sd_pipeline(), None, [])  # a pipeline whose run was not recorded
    with pytest.raises(NoGenaiPipeline, match=r"needs a diffusers pipeline .* this Linear has none"):
        text2image.find(torch.nn.Linear(2, 2), None, [])
