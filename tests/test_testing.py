"""shapetrace.testing, the offline zoo: its public names, and what a missing optional dependency says."""

import subprocess
import sys

import pytest

import shapetrace.testing as zoo

PUBLIC = ["CLIP_VOCAB_SIZE", "DEFAULT_PROMPT", "EXAMPLES", "OPENPOSE_DETECT_RESOLUTION", "OPENPOSE_IMAGE_RESOLUTION",
          "OPENPOSE_INPUT_SHAPE", "Example", "controlnet_pipeline", "img2img_pipeline", "openpose_detector",
          "pose_image", "run_openpose", "sd_pipeline", "sdxl_pipeline", "text_classification_pipeline",
          "tiny_bert_tokenizer", "tiny_clip_tokenizer", "speech_recognition_pipeline", "tiny_whisper_tokenizer"]


def test_public_names_are_pinned_and_importable():
    assert sorted(zoo.__all__) == sorted(PUBLIC)
    assert all(getattr(zoo, name) is not None for name in PUBLIC)
    from shapetrace.testing import _wake_controlnet  # not public, but bench/zoo.py imports it

    assert callable(_wake_controlnet)
    assert sorted(zoo.EXAMPLES) == ["controlnet", "img2img", "openpose", "sd", "sdxl", "text-classification"]


def test_importing_the_zoo_imports_none_of_its_optional_dependencies():
    code = ("import sys, shapetrace.testing; "
            "print(sorted(m for m in ('diffusers', 'transformers', 'controlnet_aux', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("build, module", [
    (zoo.sd_pipeline, "diffusers"),
    (zoo.tiny_clip_tokenizer, "transformers"),
    (zoo.text_classification_pipeline, "transformers"),
    (zoo.openpose_detector, "controlnet_aux.open_pose"),
    (zoo.pose_image, "PIL.Image"),
])
def test_a_missing_dependency_names_the_extra_to_install(monkeypatch, build, module):
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to import
    package = module.split(".")[0]
    with pytest.raises(ImportError, match=rf"^{package} is not installed \(shapetrace.testing needs it\): "
                                          rf"pip install 'shapetrace\[diffusers\]'$") as info:
        build()
    assert info.value.__cause__ is None and info.value.__suppress_context__  # raised `from None`
