import shapetrace

# The public face is a contract: adding a name is a decision, removing one breaks users.
EXPECTED = {
    "__version__", "find_modules", "record", "recording_for", "register_flattener", "Recording", "GraphRecord",
    "TensorSpec", "RecordingProxy", "ShapetraceError", "ModuleNotFoundInObject", "RecordingError", "FlattenError",
    "SignatureFileError", "ExportError", "VerifyError", "RuntimeMismatchError", "export_all", "prepare",
    "ExportPlan", "ExportResult", "verify", "ParityReport", "load", "RunnerError", "SourceError",
    # the names the README documents (the house issue): load's runtime, verify's records and bounds, quantization
    "Runtime", "GraphStats", "PyTorchFallbackWarning", "ParityCheck", "DEFAULT_TOLERANCES", "Tolerance",
    "DEFAULT_MIN_SNR_DB", "QuantizeOptions", "psnr", "max_abs_diff", "cpu_isa", "CpuIsa",
    # deploying from the export folder alone (the deployment issue)
    "load_pipeline", "rebuild", "runtime_of", "SkeletonError", "UnsafePathError",
    # the reliability issue: a full disk says how much space the export needed
    "DiskFullError",
}


def test_all_is_pinned():
    assert set(shapetrace.__all__) == EXPECTED


def test_every_name_resolves():
    for name in shapetrace.__all__:
        assert getattr(shapetrace, name) is not None, name


def test_error_tree_is_rooted():
    for name in ("ModuleNotFoundInObject", "RecordingError", "FlattenError", "SignatureFileError", "ExportError",
                 "VerifyError", "RuntimeMismatchError", "RunnerError", "SourceError", "SkeletonError", "UnsafePathError",
                 "DiskFullError"):
        assert issubclass(getattr(shapetrace, name), shapetrace.ShapetraceError)
