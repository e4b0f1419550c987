"""score_batches: the same top-K whatever the backend, batch size, bucket or batch-mates."""

import importlib.util
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from seqrec.batchinfer import open_model, score_batches
from seqrec.batchinfer.core import result_schema
from seqrec.errors import ConfigError, ExportError, MissingDependencyError

from histories import random_histories

SCORE_TOLERANCE = 2e-4  # the export parity tolerance of the CPR head


def assert_same_top_k(left: pa.Table, right: pa.Table) -> None:
    """Same users, scores within tolerance, and the same items except where two scores tie."""
    assert left.column("user_id").equals(right.column("user_id"))
    items = [np.array(t.column("items").to_pylist(), dtype=np.int64) for t in (left, right)]
    scores = [np.array(t.column("scores").to_pylist(), dtype=np.float32) for t in (left, right)]
    np.testing.assert_allclose(scores[0], scores[1], atol=SCORE_TOLERANCE, rtol=1e-4)
    rows, cols = np.nonzero(items[0] != items[1])
    gaps = np.abs(np.diff(scores[0], axis=1))  # (U, K - 1)
    for row, col in zip(rows, cols):
        neighbours = gaps[row, max(col - 1, 0):col + 1]
        assert neighbours.min() < SCORE_TOLERANCE, f"row {row} rank {col} differs without a tie"


def score_table(model, table: pa.Table, batch_size: int, chunk: int = 1000) -> pa.Table:
    batches = table.to_batches(max_chunksize=chunk)
    return pa.Table.from_batches(list(score_batches(iter(batches), model, batch_size)))


@pytest.fixture(scope="module")
def users() -> pa.Table:
    return pa.table({"user_id": np.arange(200), "history": random_histories(200, seed=11),
                     "segment": ["a", "b"] * 100})


@pytest.fixture(scope="module")
def models(bundle, checkpoint, run_config):
    return {"onnxruntime": open_model(run_config(bundle)),
            "torch": open_model(run_config(checkpoint, backend="torch", top_k=7))}


def test_torch_and_onnxruntime_give_the_same_top_k(models, users):
    results = {name: score_table(model, users, batch_size=64) for name, model in models.items()}
    assert_same_top_k(results["torch"], results["onnxruntime"])


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_batch_size_and_record_batch_size_change_nothing(models, users, backend):
    reference = score_table(models[backend], users, batch_size=200)
    for batch_size, chunk in [(1, 7), (13, 50), (64, 1000)]:
        assert_same_top_k(score_table(models[backend], users, batch_size, chunk), reference)


def test_a_user_alone_scores_as_in_a_batch(models, users):
    batch = score_table(models["torch"], users, batch_size=64)
    for row in (0, 57, 199):
        alone = score_table(models["torch"], users.slice(row, 1), batch_size=64)
        assert_same_top_k(alone, batch.slice(row, 1))


def test_one_result_row_per_input_row_with_other_columns_carried(models, users):
    table = users.slice(0, 10).set_column(1, "history", pa.array([[]] + random_histories(9, 1)))
    result = score_table(models["onnxruntime"], table, batch_size=4)
    assert result.schema == result_schema(table.schema, pa.int64())
    assert result.column_names == ["user_id", "segment", "items", "scores", "reject_reason", "unknown_items"]
    assert result.column("segment").equals(table.column("segment"))
    assert result.column("reject_reason").to_pylist()[:2] == ["empty_history", None]
    assert result.column("items")[0].as_py() is None and len(result.column("items")[1].as_py()) == 7
    assert set(np.concatenate(result.column("items").to_pylist()[1:])) <= set(range(1000, 1300))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_exclude_seen_never_returns_an_item_of_the_window(exported, checkpoint, run_config, backend):
    source = exported("sasrec", "cpr", exclude_seen=True)[0] if backend == "onnxruntime" else checkpoint
    model = open_model(run_config(source, backend=backend, exclude_seen=True))
    histories = random_histories(150, seed=5, longest=model.window)
    result = score_table(model, pa.table({"user_id": np.arange(150), "history": histories}), batch_size=32)
    for history, top in zip(histories, result.column("items").to_pylist()):
        assert not set(top) & set(history)


def test_bundle_options_are_baked_and_backends_need_their_source(bundle, checkpoint, run_config):
    with pytest.raises(ConfigError, match=r"--top-k \| received 20, expected 7 as baked into the graph"):
        open_model(run_config(bundle, top_k=20))
    with pytest.raises(ConfigError, match=r"--exclude-seen \| received True, expected False as baked"):
        open_model(run_config(bundle, exclude_seen=True))
    with pytest.raises(ConfigError, match="--backend torch .* expected the checkpoint directory it was exported"):
        open_model(run_config(bundle, backend="torch"))
    with pytest.raises(ConfigError, match="--backend onnxruntime .* run seqrec export"):
        open_model(run_config(checkpoint, backend="onnxruntime"))
    with pytest.raises(ConfigError, match="neither manifest.json nor config.json"):
        open_model(run_config(checkpoint.parent))
    assert open_model(run_config(bundle, top_k=7, exclude_seen=False)).top_k == 7


def test_a_bf16_bundle_on_onnxruntime_is_refused_before_any_data(bundle, run_config, tmp_path):
    """A bf16 bundle (exported for TensorRT on a GPU) scored with the default backend: one ConfigError at open,
    not ONNX Runtime's InvalidGraph traceback after the job has begun."""
    bf16 = tmp_path / "bf16"
    shutil.copytree(bundle, bf16)
    manifest = json.loads((bf16 / "manifest.json").read_text())
    manifest["export"] = {**manifest["export"], "precision": "bf16", "format": "tensorrt"}
    (bf16 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"--backend onnxruntime \| received the bf16 bundle '.*bf16' \(ONNX Runtime "
                                          r"has no bf16 kernels for its graph\), expected --backend tensorrt"):
        open_model(run_config(bf16))


@pytest.mark.parametrize("manifest", ['{"valid": true, "inputs": [', '{"valid": true}', '[1, 2]'])
def test_a_damaged_manifest_is_one_export_error(bundle, run_config, tmp_path, manifest):
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    (damaged / "manifest.json").write_text(manifest)
    with pytest.raises(ExportError, match=r"manifest.json \| received (unreadable JSON|a manifest without inputs)"):
        open_model(run_config(damaged))


def test_tensorrt_backend_without_a_gpu_is_one_clear_line(bundle, run_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: test_tensorrt_backend_matches_onnxruntime runs instead")
    with pytest.raises(MissingDependencyError, match="the TensorRT backend"):
        open_model(run_config(bundle, backend="tensorrt"))
    with pytest.raises(ConfigError, match=r"--batch-size \| received 10000, expected <= 8192 with --backend tensorrt"):
        open_model(run_config(bundle, backend="tensorrt", batch_size=10_000))  # refused before the first batch


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("tensorrt") is None,
                    reason="needs an NVIDIA GPU and tensorrt: pip install 'seqrec[gpu]'")
def test_tensorrt_backend_matches_onnxruntime(tiny_checkpoints, run_config, users, models, tmp_path):
    from seqrec.config import ExportConfig
    from seqrec.exporter import export_checkpoint

    plan_bundle = tmp_path / "trt"
    export_checkpoint(tiny_checkpoints("sasrec", "cpr"), plan_bundle, ExportConfig(format="tensorrt", top_k=7,
                                                                                  validation_users=40))
    tensorrt = open_model(run_config(plan_bundle, backend="tensorrt"))
    assert_same_top_k(score_table(tensorrt, users, 64), score_table(models["onnxruntime"], users, 64))


def test_bf16_autocast_keeps_most_of_the_fp32_top_k(checkpoint, run_config, users, models):
    bf16 = open_model(run_config(checkpoint, backend="torch", top_k=7, precision="bf16"))
    fast, exact = (score_table(model, users, 64).column("items").to_pylist() for model in (bf16, models["torch"]))
    overlap = np.mean([len(set(a) & set(b)) / 7 for a, b in zip(fast, exact)])
    assert overlap > 0.8 and fast != exact, overlap  # bf16 really ran
    with pytest.raises(ConfigError, match="--precision \\| received bf16, expected fp32 for the bundle"):
        open_model(run_config(models["onnxruntime"].source, precision="bf16"))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_fewer_items_left_than_k_gives_a_shorter_list_not_padding(tiny_checkpoints, run_config, tmp_path, backend):
    """30 items, --exclude-seen, K 25: a history of 12 distinct items leaves 18, and the list stops there."""
    from seqrec.config import ExportConfig
    from seqrec.exporter import export_checkpoint

    source = tiny_checkpoints("sasrec", "softmax", num_items=30)
    if backend == "onnxruntime":
        export_checkpoint(source, tmp_path / "bundle", ExportConfig(top_k=25, exclude_seen=True, validation_users=20),
                          echo=lambda line: None)
        source = tmp_path / "bundle"
    model = open_model(run_config(source, backend=backend, top_k=25, exclude_seen=True))
    histories = [list(range(1000, 1012)), [1000, 1000, 1001], [1029]]  # 12 distinct, 2 distinct, 1
    result = score_table(model, pa.table({"user_id": np.arange(3), "history": histories}), batch_size=2)
    lists = result.column("items").to_pylist()
    assert [len(top) for top in lists] == [18, 25, 25]
    for history, top, scores in zip(histories, lists, result.column("scores").to_pylist()):
        assert None not in top and not set(top) & set(history) and len(set(top)) == len(top)
        assert np.isfinite(scores).all() and scores == sorted(scores, reverse=True)
