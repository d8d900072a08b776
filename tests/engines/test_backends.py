"""Backends behind the Engine interface: ONNX export parity, caching, selection, precision."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.config import Settings
from service.engines.base import TileBatch
from service.engines.cache import engine_dir
from service.engines.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from service.engines.onnxruntime_engine import OnnxRuntimeEngine, ensure_onnx, onnx_path
from service.engines.registry import load_model, open_engine, resolve_serving
from service.engines.tensorrt_engine import PlanKey, TensorRTEngine
from service.engines.torch_engine import TorchEngine, resolve_precision
from service.errors import EngineUnavailable
from service.model.checkpoint import load_afunet, read_state_dict
from service.model.network import AFUNet, AFUNetConfig
from service.model_repo import model_spec
from tests.factories import GOLDEN_CHECKPOINT

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def model():
    return load_afunet(GOLDEN_CHECKPOINT)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A model repository holding the golden checkpoint as afunet version 3."""
    (tmp_path / "afunet" / "3").mkdir(parents=True)
    shutil.copy(GOLDEN_CHECKPOINT, tmp_path / "afunet" / "3" / "model.pth")
    (tmp_path / "afunet" / "config.yaml").write_text(
        "architecture: afunet\nbackends: [tensorrt, onnxruntime, torch]\n"
        "tiling: {tile_size: 64, overlap: 8, batch: 2}\n"
    )
    return tmp_path


def _tiles(batch: int, h: int, w: int, seed: int = 0) -> TileBatch:
    """Random 16-bit exposures (each tile its own scene) with EVs 0, 2, 4."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 65536, (batch, 3, h, w, 3), dtype=np.uint16)
    return TileBatch(frames, (0.0, 2.0, 4.0))


def _expected(model, batch: TileBatch) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch.model_input())).numpy()


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    """An engine cache holding the golden model's 48x64 export (one export per session:
    the dynamo exporter takes about half a minute here)."""
    cache = tmp_path_factory.mktemp("engines")
    ensure_onnx(cache, GOLDEN_CHECKPOINT, 48, 64)
    return cache


def test_onnx_export_is_valid_and_matches_pytorch_with_dynamic_batch(onnx_cache, model) -> None:
    path = onnx_path(onnx_cache, GOLDEN_CHECKPOINT, 48, 64)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert {o.domain: o.version for o in graph.opset_import}[""] >= 17
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.graph.output] == [OUTPUT_NAME]
    assert any(n.op_type == "LayerNormalization" for n in graph.graph.node)
    # No dense (windows, 64, 64) shift masks: the largest constants are the grouped
    # (4 groups, 4 heads, 64, 64) masks and the 3x3 convs' weights.
    biggest = max(np.prod(t.dims) for t in graph.graph.initializer)
    assert biggest <= max(4 * 4 * 64 * 64, 72 * 72 * 3 * 3) < 48 * 64 * 64
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = _tiles(batch, 48, 64, seed=batch)
        expected = _expected(model, x)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.model_input()})[0]
        assert got.shape == (batch, 3, 48, 64)
        assert np.abs(got - expected).max() <= 1e-4


def test_onnxruntime_engine_reuses_cached_exports(onnx_cache) -> None:
    cached = onnx_path(onnx_cache, GOLDEN_CHECKPOINT, 48, 64)
    stamp = cached.stat().st_mtime_ns
    engine = OnnxRuntimeEngine(GOLDEN_CHECKPOINT, onnx_cache, "cpu")
    out = engine.run(_tiles(2, 48, 64))
    assert out.shape == (2, 3, 48, 64)
    again = OnnxRuntimeEngine(GOLDEN_CHECKPOINT, onnx_cache, "cpu")  # a second worker
    assert np.array_equal(again.run(_tiles(2, 48, 64)), out)
    assert cached.stat().st_mtime_ns == stamp  # reused, not re-exported
    assert len(list(onnx_cache.glob("*.onnx"))) == 1


@pytest.fixture(scope="module")
def one_stage_model() -> AFUNet:
    """The golden model cut to its first stage, with its weights: alignment, fusion,
    channel attention and a plain and a shifted window block, so every kind of layer of
    the full model, in a graph that exports in about a fifth of the CPU time (8 s instead
    of 40 s per precision here; minutes on a busy 2-core CI machine)."""
    model = AFUNet(AFUNetConfig(depths=(2,), num_heads=(4,)))
    state = read_state_dict(GOLDEN_CHECKPOINT)
    model.load_state_dict({k: state[k].float() for k in model.state_dict()})
    return model.eval()


@pytest.fixture(scope="module")
def reduced_exports(tmp_path_factory, one_stage_model) -> dict[str, Path]:
    """fp16 and bf16 48x64 graphs of ``one_stage_model`` (the kind of graph TensorRT's
    reduced-precision plans are built from), exported once per module."""
    cache = tmp_path_factory.mktemp("reduced")
    return {
        p: export_onnx(one_stage_model, cache / f"{p}.onnx", 48, 64, p) for p in ("fp16", "bf16")
    }


def _input_types(graph: onnx.ModelProto) -> dict[str, list[str]]:
    """op type -> the element type of each node's first input, by strict type inference."""
    inferred = onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input]}
    types.update({t.name: t.data_type for t in g.initializer})
    out: dict[str, list[str]] = {}
    for node in g.node:
        name = onnx.TensorProto.DataType.Name(types.get(node.input[0], 0))
        out.setdefault(node.op_type, []).append(name)
    return out


@pytest.mark.parametrize(("precision", "low"), [("fp16", "FLOAT16"), ("bf16", "BFLOAT16")])
def test_reduced_precision_graphs_keep_fragile_ops_in_fp32(
    reduced_exports, one_stage_model, precision, low
):
    graph = onnx.load(str(reduced_exports[precision]))
    onnx.checker.check_model(graph, full_check=True)
    assert {o.domain: o.version for o in graph.opset_import}[""] == 22
    for io in (*graph.graph.input, *graph.graph.output):
        assert io.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, io.name
    ops = _input_types(graph)
    # Strongly typed TensorRT runs each layer in its graph type: these must say fp32.
    norms = sum(isinstance(m, torch.nn.LayerNorm) for m in one_stage_model.modules())
    assert ops["LayerNormalization"] == ["FLOAT"] * norms  # each LayerNorm, all in fp32
    assert set(ops["ReduceL2"]) == {"FLOAT"}  # the channel attention's frame-wide norms
    # ... and the heavy layers the reduced type.
    assert set(ops["Conv"]) == {low}
    assert ops["MatMul"].count(low) >= 0.8 * len(ops["MatMul"])


def test_reduced_precision_graphs_stay_within_the_parity_gate(
    reduced_exports, one_stage_model
) -> None:
    """Run the graphs themselves: fp16 in ONNX Runtime (with a dynamic batch), bf16 in
    ONNX's reference evaluator (ONNX Runtime's CPU provider has no bfloat16 Conv)."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from service.engines.parity import FP16_MIN_PSNR_MU_DB, probe_inputs
    from service.quality.metrics import psnr_mu

    scenes = probe_inputs(48, 64, seeds=(1, 2))
    x = np.concatenate([s.model_input() for s in scenes])
    with torch.inference_mode():
        expected = one_stage_model(torch.from_numpy(x)).numpy()
    fp16 = ort.InferenceSession(str(reduced_exports["fp16"]), providers=["CPUExecutionProvider"])
    bf16 = ReferenceEvaluator(str(reduced_exports["bf16"]))
    outputs = {
        "fp16": fp16.run([OUTPUT_NAME], {INPUT_NAME: x})[0],
        "bf16": np.concatenate([bf16.run(None, {INPUT_NAME: t[None]})[0] for t in x]),
    }
    for precision, got in outputs.items():
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() > 1e-6, f"{precision} graph computed in fp32"
        for i in range(len(x)):
            score = psnr_mu(got[i], expected[i])
            assert score >= FP16_MIN_PSNR_MU_DB, f"{precision} scene {i}: {score:.1f} dB"


def test_backend_falls_back_in_config_order_with_reason(repo, caplog) -> None:
    settings = Settings(model_repo=repo, device="cpu")
    with caplog.at_level(logging.WARNING, logger="service.engines.registry"):
        served = load_model(settings)
    assert served.engine.backend == "onnxruntime"
    assert "tensorrt" in caplog.text
    assert (served.tile_size, served.tile_overlap, served.tile_batch) == (64, 8, 2)
    assert served.describe()["version"] == 3


def test_forced_backend_that_cannot_open_is_a_clear_error(repo) -> None:
    spec = model_spec(repo, "afunet")
    forced = Settings(model_repo=repo, device="cpu", engine="tensorrt")
    with pytest.raises(EngineUnavailable, match="no backend can serve 'afunet': tensorrt"):
        open_engine(spec, resolve_serving(spec, forced), forced)
    unknown = Settings(model_repo=repo, engine="numpy-fast")
    with pytest.raises(EngineUnavailable, match="'numpy-fast' names no backend; known: numpy"):
        resolve_serving(spec, unknown)
    listed = replace(resolve_serving(spec, Settings(model_repo=repo)), backends=("numpy-fast",))
    with pytest.raises(EngineUnavailable, match="not implemented"):
        open_engine(spec, listed, unknown)


def test_repository_engines_are_cached_in_the_version_folder(repo) -> None:
    spec = model_spec(repo, "afunet")
    assert engine_dir(spec, Settings(model_repo=repo)) == repo / "afunet" / "3" / "engines"
    shared = Settings(model_repo=repo, engine_cache=repo / "cache")
    assert engine_dir(spec, shared) == repo / "cache" / "afunet" / "3"


def test_torch_engine_refuses_fp16_on_cpu_and_stays_fp32_by_default() -> None:
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(EngineUnavailable, match="needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))


def test_torch_engine_runs_batches_on_cpu(model) -> None:
    """On CPU a batch's tiles run one at a time: each is exactly the network on it alone."""
    engine = TorchEngine(load_afunet(GOLDEN_CHECKPOINT), torch.device("cpu"), "auto")
    x = _tiles(2, 32, 40)
    expected = np.concatenate(
        [_expected(model, TileBatch(x.frames[i : i + 1], x.evs)) for i in (0, 1)]
    )
    assert engine.precision == "fp32"
    assert np.array_equal(engine.run(x), expected)


def test_plan_key_names_every_property_it_depends_on() -> None:
    key = PlanKey("NVIDIA H100 80GB HBM3", "90", "10.9.0", "bf16", 256, 256, 4, "abc123")
    name = key.file_name()
    for part in ("NVIDIA-H100-80GB-HBM3", "sm90", "trt10.9.0", "bf16", "256x256", "b4", "abc123"):
        assert part in name
    other = PlanKey("NVIDIA A100-SXM4-40GB", "80", "10.9.0", "bf16", 256, 256, 4, "abc123")
    differences = key.mismatch(other)
    assert len(differences) == 2 and "A100" in differences[0] and "'80'" in differences[1]


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt") is not None,
    reason="checks the behaviour where TensorRT is absent",
)
def test_tensorrt_engine_without_tensorrt_is_unavailable() -> None:
    with pytest.raises(EngineUnavailable, match="TensorRT is not installed"):
        TensorRTEngine(GOLDEN_CHECKPOINT, Path("/nonexistent"), "bf16")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_torch_cuda_precisions_track_fp32(model, precision) -> None:
    x = _tiles(2, 64, 64, seed=3)
    expected = _expected(model, x)
    engine = TorchEngine(load_afunet(GOLDEN_CHECKPOINT), torch.device("cuda"), precision)
    got = engine.run(x)
    tolerance = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 5e-3}[precision]
    assert np.abs(got - expected).max() <= tolerance


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
def test_cuda_graph_replay_equals_eager() -> None:
    x = _tiles(2, 64, 64, seed=4)
    eager = TorchEngine(load_afunet(GOLDEN_CHECKPOINT), torch.device("cuda"), "fp32")
    graphs = TorchEngine(
        load_afunet(GOLDEN_CHECKPOINT), torch.device("cuda"), "fp32", cuda_graphs=True
    )
    first = graphs.run(x)
    second = graphs.run(_tiles(2, 64, 64, seed=5))
    assert np.abs(first - eager.run(x)).max() <= 1e-5
    assert np.abs(second - eager.run(_tiles(2, 64, 64, seed=5))).max() <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt") is None or not HAS_CUDA,
    reason="TensorRT is not installed here (or no CUDA GPU)",
)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_tensorrt_plan_builds_caches_and_matches_pytorch(tmp_path, model, precision) -> None:
    from service.engines.parity import FP16_MIN_PSNR_MU_DB, probe_inputs
    from service.quality.metrics import psnr_mu

    engine = TensorRTEngine(GOLDEN_CHECKPOINT, tmp_path, precision, max_batch=2)
    (scene,) = probe_inputs(64, 64, seeds=(6,))
    x = TileBatch(np.concatenate([scene.frames, _tiles(1, 64, 64, seed=6).frames]), scene.evs)
    expected = _expected(model, x)
    got = engine.run(x)
    if precision == "fp32":  # a strongly typed fp32 plan with TF32 off
        assert np.abs(got - expected).max() <= 1e-4
    else:
        assert psnr_mu(got[0], expected[0]) >= FP16_MIN_PSNR_MU_DB
    path = engine.prepare(64, 64)
    assert path.is_file() and path.with_suffix(".json").is_file()
    reopened = TensorRTEngine(GOLDEN_CHECKPOINT, tmp_path, precision, max_batch=2, build=False)
    assert np.array_equal(reopened.run(x), got)


def test_autotune_picks_a_measured_plan_within_budget(model) -> None:
    from service.engines.autotune import autotune, candidate_plans

    engine = TorchEngine(load_afunet(GOLDEN_CHECKPOINT), torch.device("cpu"), "fp32")
    plans = [(16, 1), (16, 2), (32, 1)]
    choice = autotune(engine, plans, memory_budget=1 << 30, repeats=1)
    assert (choice.tile, choice.batch) in plans and choice.megapixels_per_s > 0
    starved = autotune(engine, plans, memory_budget=1, repeats=1)
    assert (starved.tile, starved.batch) == (16, 1)  # nothing fits: the smallest plan
    assert candidate_plans(256, largest=512) == [
        (t, b) for t in (256, 384, 512) for b in (1, 2, 4, 8)
    ]


def test_candidate_plans_keep_a_pinned_tile_or_batch() -> None:
    from service.engines.autotune import candidate_plans

    assert candidate_plans(512, tune_tile=False) == [(512, b) for b in (1, 2, 4, 8)]
    assert candidate_plans(512, batch=3) == [(t, 3) for t in (512, 768, 1024)]
    assert candidate_plans(512, tune_tile=False, batch=3) == [(512, 3)]


def test_repository_autotune_setting_is_reported_and_validated(repo) -> None:
    config = repo / "afunet" / "config.yaml"
    config.write_text(config.read_text().replace("batch: 2}", "batch: 2, autotune: off}"))
    assert load_model(Settings(model_repo=repo, device="cpu")).tile_source == "config"
    config.write_text("architecture: afunet\ntiling: {tile_size: 1024, autotune: maybe}\n")
    with pytest.raises(EngineUnavailable, match=r"tiling\.autotune must be"):
        load_model(Settings(model_repo=repo, device="cpu"))


def test_forced_engine_does_not_apply_to_the_weight_free_model() -> None:
    served = load_model(
        Settings(model_repo=Path(__file__).parents[2] / "model_repo", engine="torch"),
        "classical",
    )
    assert served.engine.backend == "numpy"
