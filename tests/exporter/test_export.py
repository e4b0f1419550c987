"""Every registered model x head exports to ONNX and matches PyTorch through ONNX Runtime on CPU."""

import json
import os

import numpy as np
import pytest
import torch

from seqrec.config import ExportConfig
from seqrec.errors import ConfigError, ExportError, ExportMismatchError
from seqrec.exporter import EXPORT_SPECS, OnnxRuntimeRunner, export_checkpoint, load_bundle, spec_for
from seqrec.exporter.graph import compact
from seqrec.models import ENCODERS, HEADS
from seqrec.training import load_checkpoint, save_checkpoint

from tensorrt_devices import requires_tensorrt

PAIRS = [(model, head) for model in ENCODERS for head in HEADS]


def test_every_registered_model_and_head_has_an_export_spec():
    assert sorted(PAIRS) == sorted(EXPORT_SPECS)


EXCLUDING = [("sasrec", "cpr"), ("gru4rec", "softmax")]  # seen-item exclusion, once per head


@pytest.mark.parametrize("model,head,exclude_seen", [(m, h, False) for m, h in PAIRS] + [(m, h, True) for m, h in EXCLUDING])
def test_export_validates_and_writes_a_valid_bundle(exported, model, head, exclude_seen):
    out, lines = exported(model, head, exclude_seen=exclude_seen)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["valid"] and manifest["export"]["exclude_seen"] == exclude_seen
    assert [c["name"] for c in manifest["parity"][0]["cases"]] == [
        "random users", "length 1", "full length", "longer than window", "all repeats", "no known item",
        "unknown last", "unknown in middle"]
    assert manifest["inputs"][0] == {"name": "items", "dtype": "int64", "shape": ["batch", "length"]}
    assert manifest["source"]["fingerprint"] == "tiny" and "onnxruntime" in manifest["versions"]
    assert manifest["custom_ops"] == []  # standard ops only: plain ONNX Runtime loads it
    assert lines[0].startswith("parity onnxruntime vs pytorch fp32") and len(lines) == 9
    assert load_bundle(out).vocab.decode(np.array([1])).to_pylist() == [1000]


def catalog_products(graph) -> tuple[list, set[str]]:
    """(the nodes reading the item table, the outputs of the products with it: Gemm or MatMul nodes reading the
    table or a Slice of it)."""
    table = "model.head.item_embedding.weight"
    readers = [node for node in graph.node if table in node.input]
    views = {table} | {node.output[0] for node in readers if node.op_type == "Slice"}
    products = {node.output[0] for node in graph.node if node.op_type in ("Gemm", "MatMul") and set(node.input) & views}
    return readers, products


@pytest.mark.parametrize("model,head,exclude_seen", [(m, h, False) for m, h in PAIRS] + [(m, h, True) for m, h in EXCLUDING])
def test_the_catalog_is_scored_as_stored_and_its_scores_never_transposed_or_scattered_by_position(
        exported, model, head, exclude_seen):
    """The product reads the table as stored (Gemm; a Transpose of it is a copy that ONNX Runtime folds at load, or
    beyond 1 GB recomputes every call), and padding and seen items reach the (batch, N+1) scores as one
    ScatterElements: an index_fill on the last dimension exported as Transpose + ScatterND + Transpose of the
    whole matrix (half of ONNX Runtime's time at 100k items)."""
    import onnx

    out, _ = exported(model, head, exclude_seen=exclude_seen)
    graph = onnx.load(str(out / "model.onnx")).graph
    assert not [node.name for node in graph.node if node.op_type == "ScatterND"]
    table_readers, products = catalog_products(graph)
    assert {node.op_type for node in table_readers} <= {"Gather", "Gemm", "MatMul", "Slice"}
    assert len(products) == 1
    readers = {node.op_type for node in graph.node if set(node.input) & products}
    assert readers <= {"ScatterElements", "TopK"}, readers


@pytest.mark.parametrize("head,exclude_seen", [("softmax", False), ("softmax", True), ("cpr", False), ("cpr", True)])
def test_a_catalog_larger_than_the_block_is_scored_block_by_block_and_holds_parity(tiny_checkpoints, tmp_path, head,
                                                                                   exclude_seen):
    """700 items of 16 values: more than the exporter's optimizer folds, so the blocks are Slices of the one
    stored table, as for any real catalog (a tiny table's slices would be folded into copies)."""
    import onnx

    out = tmp_path / "bundle"
    lines: list[str] = []
    config = ExportConfig(top_k=7, validation_users=40, exclude_seen=exclude_seen, catalog_block=128)
    bundle = export_checkpoint(tiny_checkpoints("sasrec", head, num_items=700), out, config, echo=lines.append)
    assert bundle.manifest["valid"] and bundle.manifest["export"]["catalog_block"] == 128
    graph = onnx.load(str(out / "model.onnx")).graph
    _, products = catalog_products(graph)
    assert len(products) == 6  # 701 rows (padding and 700 items) in blocks of 128
    tables = [init.name for init in graph.initializer if len(init.dims) == 2 and init.dims[0] >= 128]
    assert tables == ["model.head.item_embedding.weight"]  # stored once
    assert all(line.startswith("  ok") for line in lines[1:]), lines
    assert_blocks_stay_slices_of_the_table_in_onnxruntime(out, tmp_path / "optimized.onnx")


def assert_blocks_stay_slices_of_the_table_in_onnxruntime(bundle, optimized_path) -> None:
    """The runner's session keeps the blocks as Slices of the one table: folded, each would be a copy made at load."""
    import onnx

    class Recording(OnnxRuntimeRunner):
        def session_options(self, ort):
            options = super().session_options(ort)
            options.optimized_model_filepath = str(optimized_path)
            return options

    with Recording(bundle / "model.onnx", ("items",)):
        pass
    graph = onnx.load(str(optimized_path), load_external_data=False).graph  # its weights: the bundle's file
    tables = [init.name for init in graph.initializer if len(init.dims) == 2 and init.dims[0] >= 128]
    assert tables == ["model.head.item_embedding.weight"]
    assert len(catalog_products(graph)[1]) == 6


@pytest.mark.parametrize("model", list(ENCODERS))
def test_dynamic_batch_and_length_really_vary(exported, model):
    out, _ = exported(model, "cpr")
    spec = spec_for(model, "cpr")
    with OnnxRuntimeRunner(out / "model.onnx", spec.inputs) as runner:
        for batch, length in [(1, 1), (2, 3), (33, 12), (5, 40)]:
            feed = {name: tensor.numpy() for name, tensor in spec.sample_inputs(300, batch, length, seed=batch).items()}
            result = runner.infer(feed)
            assert result["top_items"].shape == (batch, 7) and result["top_scores"].dtype == np.float32


@pytest.mark.parametrize("model,head", EXCLUDING)
def test_exclude_seen_never_returns_a_history_item(exported, model, head):
    out, _ = exported(model, head, exclude_seen=True)
    items = np.random.default_rng(0).integers(1, 301, (64, 12))
    with OnnxRuntimeRunner(out / "model.onnx", ("items",)) as runner:
        top = runner.infer({"items": items})["top_items"]
    assert not (top[:, :, None] == items[:, None, :]).any() and (top > 0).all()


def test_compact_removes_every_slot_without_a_known_item():
    items = torch.tensor([[0, 5, 301, 7, 0, -1, 9], [1, 2, 3, 4, 5, 6, 400], [0] * 7, [8, 0, 0, 0, 0, 0, 0]])
    times = torch.arange(1, 29).view(4, 7) * 10
    got_items, got_times = compact(items, times, 300)
    assert got_items.tolist() == [[0, 0, 0, 0, 5, 7, 9], [0, 1, 2, 3, 4, 5, 6], [0] * 7, [0, 0, 0, 0, 0, 0, 8]]
    assert got_times.tolist() == [[0, 0, 0, 0, 20, 40, 70], [0, 80, 90, 100, 110, 120, 130], [0] * 7,
                                  [0, 0, 0, 0, 0, 0, 220]]
    assert compact(items, None, 300)[1] is None


def _histories_with_unknown_ids(inputs: tuple[str, ...]) -> tuple[dict, dict]:
    """(feed, the same histories with every slot that is no known item removed), both left padded. Rows: a new
    item last, holes in the middle, right padding, a hole in the middle of a history longer than the window."""
    rng = np.random.default_rng(3)
    rows = [[5, 17, 42, -1], [9, 301, 12, 2**40, 3, 1000], [4, 8, 15, 16, 0, 0], [7] * 3 + [0] + list(range(1, 12)),
            [-(2**40), 23, 0, 42, 301], [2**62], list(rng.integers(1, 301, 12)) + [-300]]
    length = max(map(len, rows))

    def feed_of(histories):
        items = np.zeros((len(histories), length), np.int64)
        times = np.zeros((len(histories), length), np.int64)
        for row, (history, stamps) in enumerate(histories):
            items[row, length - len(history):], times[row, length - len(history):] = history, stamps
        return {"items": items, "timestamps": times}

    timed = [(row, [1_600_000_000 + 3600 * slot for slot in range(len(row))]) for row in rows]
    known = [([i for i in row if 0 < i <= 300], [t for i, t in zip(row, times) if 0 < i <= 300])
             for row, times in timed]
    feed, clean = feed_of(timed), feed_of(known)
    return {name: feed[name] for name in inputs}, {name: clean[name] for name in inputs}


@pytest.mark.parametrize("model,head", PAIRS)
def test_ids_that_are_no_known_item_are_removed_from_the_history_by_the_graph(exported, tiny_checkpoints, model,
                                                                              head):
    """A brand-new item in the last slot used to become padding in place: the prediction slot was padding and the
    graph ignored the whole history (softmax: items 1..K, score 0); a hole in the middle changed GRU4Rec's answer.
    Now the answer is the one for the history without those slots, as seqrec score gives, timestamps moved too."""
    out, _ = exported(model, head)
    inputs = load_bundle(out).inputs
    feed, clean = _histories_with_unknown_ids(inputs)
    with OnnxRuntimeRunner(out / "model.onnx", inputs) as runner:
        got, expected = runner.infer(feed), runner.infer(clean)
    np.testing.assert_array_equal(got["top_items"], expected["top_items"])
    np.testing.assert_allclose(got["top_scores"], expected["top_scores"], rtol=1e-5, atol=1e-5)
    net = load_checkpoint(tiny_checkpoints(model, head)).model
    with torch.no_grad():  # and the answer is PyTorch's for the history without them
        window = {name: torch.from_numpy(value)[:, -net.cfg.max_length:] for name, value in clean.items()}
        reference = net(*window.values()).float()
    reference[:, 0] = float("-inf")
    np.testing.assert_allclose(got["top_scores"], reference.topk(7).values.numpy(), rtol=1e-4, atol=5e-4)


def test_a_graph_that_reads_unknown_ids_as_padding_in_place_fails_parity(tiny_checkpoints, tmp_path, monkeypatch):
    """The parity cases with unknown ids are checked against the histories without them, so the old graph, which set
    such ids to 0 where they stood, is refused."""
    from seqrec.exporter import graph

    monkeypatch.setattr(graph, "compact", lambda items, timestamps, n: (
        items.masked_fill((items < 0) | (items > n), 0), timestamps))
    with pytest.raises(ExportMismatchError, match=r"on 'unknown (last|in middle)'"):
        export_checkpoint(tiny_checkpoints("sasrec", "softmax"), tmp_path / "b", ExportConfig(validation_users=8),
                          echo=lambda s: None)
    cases = json.loads((tmp_path / "b" / "manifest.json").read_text())["parity"][0]["cases"]
    assert [case["name"] for case in cases if not case["ok"]] == ["unknown last", "unknown in middle"]


def test_broken_graph_is_refused_and_marked_invalid(tiny_checkpoints, tmp_path, monkeypatch):
    from seqrec.exporter import validate

    original = validate.compare_case

    def corrupt(name, graph, spec, feed, outputs):  # a backend that returns the wrong ranking
        outputs = {**outputs, "top_items": outputs["top_items"][:, ::-1].copy()}
        return original(name, graph, spec, feed, outputs)

    monkeypatch.setattr(validate, "compare_case", corrupt)
    out = tmp_path / "bundle"
    with pytest.raises(ExportMismatchError, match=r"wrong top-K items"):
        export_checkpoint(tiny_checkpoints("sasrec", "softmax"), out, ExportConfig(validation_users=8), echo=lambda s: None)
    assert json.loads((out / "manifest.json").read_text())["valid"] is False
    with pytest.raises(ExportError, match="parity check failed"):
        load_bundle(out)


def test_a_failed_export_over_a_bundle_keeps_it_in_service(tiny_checkpoints, tmp_path, monkeypatch):
    from seqrec.exporter import validate

    checkpoint, out = tiny_checkpoints("sasrec", "softmax"), tmp_path / "bundle"
    export_checkpoint(checkpoint, out, ExportConfig(validation_users=8), echo=lambda s: None)
    served = (out / "model.onnx").read_bytes()
    original = validate.compare_case
    monkeypatch.setattr(validate, "compare_case", lambda name, graph, spec, feed, outputs: original(
        name, graph, spec, feed, {**outputs, "top_items": outputs["top_items"][:, ::-1].copy()}))
    with pytest.raises(ExportMismatchError, match=r"marked invalid, is in '.*bundle.failed'; '.*bundle' keeps"):
        export_checkpoint(checkpoint, out, ExportConfig(validation_users=8, top_k=5), echo=lambda s: None)
    assert load_bundle(out).manifest["valid"] and (out / "model.onnx").read_bytes() == served
    assert json.loads((tmp_path / "bundle.failed" / "manifest.json").read_text())["valid"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle.failed"]  # no staging left behind


def test_out_failed_must_be_a_bundle_an_empty_directory_or_absent(tiny_checkpoints, tmp_path, monkeypatch):
    """A failed export over a bundle replaces OUT.failed: anything there but a bundle is refused before any work,
    not deleted after a parity failure."""
    from seqrec.exporter import api

    checkpoint, out = tiny_checkpoints("sasrec", "softmax"), tmp_path / "bundle"
    export_checkpoint(checkpoint, out, ExportConfig(validation_users=8), echo=lambda s: None)
    (tmp_path / "bundle.failed").mkdir()
    (tmp_path / "bundle.failed" / "keep.txt").write_text("important")
    monkeypatch.setattr(api, "export_onnx", lambda *args: pytest.fail("work began before OUT.failed was checked"))
    with pytest.raises(ConfigError, match=r"OUT.failed .*'.*bundle.failed' \| received a directory that is not a "
                                          r"bundle \(no manifest.json\); it is not replaced"):
        export_checkpoint(checkpoint, out, ExportConfig(validation_users=8), echo=lambda s: None)
    assert (tmp_path / "bundle.failed" / "keep.txt").read_text() == "important"
    (tmp_path / "bundle.failed" / "keep.txt").unlink()
    (tmp_path / "bundle.failed").rmdir()
    (tmp_path / "bundle.failed").write_text("a file")
    with pytest.raises(ConfigError, match=r"OUT.failed .* received a file"):
        export_checkpoint(checkpoint, out, ExportConfig(validation_users=8), echo=lambda s: None)
    assert (tmp_path / "bundle.failed").read_text() == "a file" and load_bundle(out).manifest["valid"]


def test_out_must_be_a_bundle_an_empty_directory_or_absent(tiny_checkpoints, tmp_path, monkeypatch):
    """Anything else at --out would be deleted by the atomic replace: refused before any work."""
    checkpoint = tiny_checkpoints("sasrec", "softmax")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("important")
    (tmp_path / "afile").write_text("x")
    refusals = {tmp_path / "notes": "a directory that is not a bundle", tmp_path / "afile": "received a file",
                checkpoint: "or a directory holding it", checkpoint.parent: "or a directory holding it",
                checkpoint / "sub": "received a path inside '.*'", checkpoint / "a" / "b": "received a path inside"}
    held = sorted(checkpoint.iterdir())
    for out, message in refusals.items():
        with pytest.raises(ConfigError, match=message):
            export_checkpoint(checkpoint, out, ExportConfig(validation_users=8), echo=lambda s: None)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "important" and sorted(checkpoint.iterdir()) == held
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    old_umask = os.umask(0o022)
    try:
        export_checkpoint(checkpoint, ".", ExportConfig(validation_users=8), echo=lambda s: None)  # '.' works too
    finally:
        os.umask(old_umask)
    assert load_bundle(tmp_path / "empty").manifest["valid"]
    assert (tmp_path / "empty").stat().st_mode & 0o777 == 0o755  # readable by a service, not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "notes"]


def test_a_bundle_holding_anything_else_is_not_replaced(tiny_checkpoints, tmp_path):
    """An export replaces a bundle whole: whatever else a user keeps in it (a README for the serving team, a
    second model) is named and the export refused before any work; a bundle of its own files alone is replaced."""
    checkpoint = tiny_checkpoints("sasrec", "softmax")
    out = tmp_path / "bundle"
    export_checkpoint(checkpoint, out, ExportConfig(validation_users=8), echo=lambda s: None)
    (out / "README.txt").write_text("for the serving team")
    with pytest.raises(ConfigError, match=r"--out '.*bundle' \| received a bundle that also holds 'README.txt', "
                                          r"which replacing it would delete"):
        export_checkpoint(checkpoint, out, ExportConfig(validation_users=8), echo=lambda s: None)
    assert (out / "README.txt").read_text() == "for the serving team"
    (out / "README.txt").unlink()
    export_checkpoint(checkpoint, out, ExportConfig(validation_users=8, top_k=5), echo=lambda s: None)
    assert load_bundle(out).manifest["export"]["top_k"] == 5


def test_custom_pointer_op_is_refused_where_the_graph_has_no_history_scatter(tiny_checkpoints, tmp_path):
    cases = [("softmax", False, "head 'softmax'"), ("cpr", True, "head 'cpr', variant 'CPR:20\\+Mi', exclude_seen True")]
    for head, exclude_seen, received in cases:
        with pytest.raises(ConfigError, match=rf"--pointer-op custom \| received {received}"):
            export_checkpoint(tiny_checkpoints("sasrec", head), tmp_path / "b",
                              ExportConfig(pointer_op="custom", exclude_seen=exclude_seen), echo=lambda s: None)


def test_tensorrt_topk_limit_counts_the_candidates_and_the_window_only_by_block(tiny_checkpoints):
    from seqrec.exporter.tensorrt import check_topk_sizes
    from seqrec.training import load_checkpoint

    big = load_checkpoint(tiny_checkpoints("sasrec", "softmax", num_items=5000)).model
    check_topk_sizes(big, 3840, window=12, catalog_block=5001)  # whole: the window (12) never enters a TopK
    cpr = load_checkpoint(tiny_checkpoints("sasrec", "cpr", num_items=5000)).model  # CPR:20+Mi
    check_topk_sizes(cpr, 3820, window=12, catalog_block=5001)
    with pytest.raises(ConfigError, match=r"received 3841, expected <= 3840"):
        check_topk_sizes(cpr, 3821, window=12, catalog_block=5001)
    tiny = load_checkpoint(tiny_checkpoints("sasrec", "cpr")).model  # 300 items: never more candidates than that
    check_topk_sizes(tiny, 3821, window=12, catalog_block=301)
    check_topk_sizes(big, 3839, window=12, catalog_block=4000)  # by block: + padding
    with pytest.raises(ConfigError, match=r"\+ 1, per catalog block\) \| received 3841"):
        check_topk_sizes(big, 3840, window=12, catalog_block=4000)
    check_topk_sizes(big, 3827, window=12, catalog_block=4000, exclude_seen=True)  # + padding + the window
    with pytest.raises(ConfigError, match=r"\+ 1 \+ the window, per catalog block\) \| received 3841"):
        check_topk_sizes(big, 3828, window=12, catalog_block=4000, exclude_seen=True)
    check_topk_sizes(big, 3840, window=12, catalog_block=1000, exclude_seen=True)  # no block takes more than its rows


def test_bad_export_options_are_typed_errors(tiny_checkpoints, tmp_path):
    with pytest.raises(ConfigError, match=r"export max_length \| received 99"):
        export_checkpoint(tiny_checkpoints("sasrec", "softmax"), tmp_path / "b", ExportConfig(max_length=99))
    with pytest.raises(ConfigError, match=r"top_k \| received 5000"):
        ExportConfig(top_k=5000)
    with pytest.raises(ConfigError, match=r"catalog_block \| received 0, expected >= 1"):
        ExportConfig(catalog_block=0)
    from seqrec.errors import ModelInputError

    model = load_checkpoint(tiny_checkpoints("sasrec", "softmax")).model
    with pytest.raises(ModelInputError, match=r"catalog_block \| received 2.5, expected an integer >= 1"):
        model.top_k(torch.ones(1, 3, dtype=torch.long), 2, catalog_block=2.5)


@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])  # the node belongs to the head; two encoders suffice
def test_custom_pointer_op_is_one_seqrec_node_served_by_onnxruntime(exported, model):
    import onnx

    out, lines = exported(model, "cpr", pointer_op="custom")
    graph = onnx.load(str(out / "model.onnx")).graph
    custom = [node for node in graph.node if node.domain == "seqrec"]
    assert [node.op_type for node in custom] == ["CprScatter"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in custom[0].attribute}
    assert attributes == {"plugin_namespace": b"seqrec", "aot": 1}  # what TensorRT's parser reads; ORT ignores
    assert json.loads((out / "manifest.json").read_text())["valid"]  # parity held through the custom kernel
    standard, _ = exported(model, "cpr")
    items = np.random.default_rng(5).integers(1, 40, (16, 12))  # few ids: duplicates in every row
    with OnnxRuntimeRunner(out / "model.onnx", ("items",), custom_ops=True) as fast, \
            OnnxRuntimeRunner(standard / "model.onnx", ("items",)) as plain:
        mine, theirs = fast.infer({"items": items}), plain.infer({"items": items})
    np.testing.assert_array_equal(mine["top_items"], theirs["top_items"])
    np.testing.assert_allclose(mine["top_scores"], theirs["top_scores"], rtol=1e-5, atol=1e-5)


def test_manifest_declares_the_custom_ops_plain_onnxruntime_cannot_run(exported):
    """A serving team reads from the manifest, before loading, that a --pointer-op custom graph holds a seqrec node
    plain ONNX Runtime refuses, and what runs it; a standard graph declares none and loads anywhere."""
    import onnxruntime

    custom, _ = exported("sasrec", "cpr", pointer_op="custom")
    standard, _ = exported("sasrec", "cpr")
    declared = json.loads((custom / "manifest.json").read_text())["custom_ops"]
    assert [{key: op[key] for key in ("domain", "op_type", "version", "nodes")} for op in declared] == [
        {"domain": "seqrec", "op_type": "CprScatter", "version": 1, "nodes": 1}]
    assert "onnxruntime-extensions" in declared[0]["runs_on"]["onnxruntime"]
    assert "plugin" in declared[0]["runs_on"]["tensorrt"]
    with pytest.raises(Exception, match="CprScatter"):  # what the declaration warns of
        onnxruntime.InferenceSession(str(custom / "model.onnx"), providers=["CPUExecutionProvider"])
    assert load_bundle(standard).manifest["custom_ops"] == []
    onnxruntime.InferenceSession(str(standard / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("pointer_op", ["standard", "custom"])
def test_logsumexp_pooling_exports_and_holds_parity(tiny_checkpoints, tmp_path, pointer_op):
    checkpoint = tiny_checkpoints("gru4rec", "cpr", cpr_pooling="logsumexp")
    out = tmp_path / "bundle"
    export_checkpoint(checkpoint, out, ExportConfig(top_k=7, validation_users=40, pointer_op=pointer_op),
                      echo=lambda line: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["valid"]  # parity with PyTorch on every case, "all repeats" included
    items = torch.tensor([[3, 3, 3, 9, 3, 1, 1, 3, 3, 9, 9, 3]])  # item 3 seven times, 9 three times, 1 twice
    with OnnxRuntimeRunner(out / "model.onnx", ("items",), custom_ops=pointer_op == "custom") as runner:
        top = runner.infer({"items": items.numpy()})["top_scores"]
    net = load_checkpoint(checkpoint).model
    with torch.no_grad():
        expected = net(items).topk(7).values.numpy()
    np.testing.assert_allclose(top, expected, rtol=1e-5, atol=1e-5)


def test_plain_base_partition_exports_and_holds_parity(tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints("sasrec", "cpr", cpr_base_projection=False)  # base logits h . E, no f_S
    out = tmp_path / "bundle"
    export_checkpoint(checkpoint, out, ExportConfig(top_k=7, validation_users=40), echo=lambda line: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["valid"]
    cases = {case["name"]: case for case in manifest["parity"][0]["cases"]}
    assert cases["no known item"]["undefined_users"] == 4  # h = 0: every base logit ties, any 20 may be reranked
    assert all(case["undefined_users"] == 0 for name, case in cases.items() if name != "no known item")


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_cpr_export_on_a_catalog_smaller_than_the_reranker_holds_parity(tiny_checkpoints, tmp_path, exclude_seen):
    """30 items under CPR:100: the reranker's first stage takes every item and its empty slots must stay empty."""
    checkpoint = tiny_checkpoints("sasrec", "cpr", num_items=30, cpr_variant="CPR:100,5+Mi")
    out = tmp_path / "bundle"
    export_checkpoint(checkpoint, out, ExportConfig(top_k=7, validation_users=40, exclude_seen=exclude_seen),
                      echo=lambda line: None)
    assert json.loads((out / "manifest.json").read_text())["valid"]
    items = np.random.default_rng(4).integers(1, 31, (16, 12))  # 12 slots of 30 items: many repeats
    with OnnxRuntimeRunner(out / "model.onnx", ("items",)) as runner:
        top = runner.infer({"items": items})["top_items"]
    assert all(len(set(row)) == 7 for row in top.tolist()) and (top > 0).all()
    if exclude_seen:
        assert not (top[:, :, None] == items[:, None, :]).any()


@pytest.mark.parametrize("positions", ["both"])  # absolute embeddings and the relative bias; relative alone, the
# default, is in every test above, and absolute alone adds no node "both" lacks
def test_position_embeddings_export_and_hold_parity(tiny_checkpoints, tmp_path, positions):
    checkpoint = tiny_checkpoints("hstu", "softmax", positions=positions)
    ckpt = load_checkpoint(checkpoint)
    if ckpt.model.encoder.relative_bias is not None:  # move the bias off its zero start so parity tests it
        with torch.no_grad():
            ckpt.model.encoder.relative_bias.normal_(0.0, 0.5)
        checkpoint = save_checkpoint(tmp_path / "ckpt", ckpt)
    out = tmp_path / "bundle"
    export_checkpoint(checkpoint, out, ExportConfig(top_k=7, validation_users=40), echo=lambda line: None)
    assert json.loads((out / "manifest.json").read_text())["valid"]
    spec = spec_for("hstu", "softmax")
    feed = spec.sample_inputs(ckpt.model.cfg.num_items, batch=9, length=12, seed=3)  # irregular lengths, times
    with OnnxRuntimeRunner(out / "model.onnx", spec.inputs) as runner:
        top = runner.infer({name: tensor.numpy() for name, tensor in feed.items()})
    with torch.no_grad():
        expected = ckpt.model(**feed).topk(7)
    np.testing.assert_array_equal(top["top_items"], expected.indices.numpy())
    np.testing.assert_allclose(top["top_scores"], expected.values.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,head", [("sasrec", "cpr"), ("pcrec", "softmax")])  # PCRec: its steps stay fp32
def test_fp16_export_keeps_the_top_k(exported, model, head):
    out, lines = exported(model, head, precision="fp16")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["valid"] and manifest["export"]["precision"] == "fp16"
    random_users = manifest["parity"][0]["cases"][0]
    assert random_users["wrong_items"] == 0 and random_users["top_k_agreement"] > 0.95


def test_fp16_export_of_an_l2_normalised_head(tiny_checkpoints, tmp_path):
    """A history with no known item gives h = 0: its unit vector must stay 0 in fp16, not 0 / 0."""
    ckpt = tiny_checkpoints("sasrec", "softmax", l2_normalize=True)
    export_checkpoint(ckpt, tmp_path / "b", ExportConfig(top_k=7, validation_users=40, precision="fp16"),
                      echo=lambda line: None)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["valid"] and all(case["wrong_items"] == 0 for case in manifest["parity"][0]["cases"])


@pytest.mark.parametrize("catalog_block", [128, 1024])
def test_an_l2_normalised_head_exports_its_unit_table_as_a_constant(tiny_checkpoints, tmp_path, catalog_block):
    """Normalising the whole table in the graph ran at every call once ONNX Runtime stopped folding constants
    (1.3-2.7x slower): the graph now stores the unit table; nothing computes with the raw table but lookups."""
    import onnx

    ckpt = tiny_checkpoints("sasrec", "softmax", l2_normalize=True, num_items=700)
    bundle = export_checkpoint(ckpt, tmp_path / "b", ExportConfig(top_k=7, validation_users=40,
                                                                  catalog_block=catalog_block), echo=lambda line: None)
    assert bundle.manifest["valid"]
    graph = onnx.load(str(tmp_path / "b" / "model.onnx")).graph
    assert {node.op_type for node in graph.node if "model.head.item_embedding.weight" in node.input} == {"Gather"}
    tables = {init.name for init in graph.initializer if list(init.dims) == [701, 16]}
    assert len(tables) == 2  # the weights (lookups) and their unit rows (scoring)


def test_bf16_needs_tensorrt(tiny_checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="bf16 with --format onnx"):
        export_checkpoint(tiny_checkpoints("sasrec", "softmax"), tmp_path / "b", ExportConfig(precision="bf16"))


def test_tensorrt_without_a_gpu_is_one_clear_line(tiny_checkpoints, tmp_path):
    import torch
    from seqrec.errors import MissingDependencyError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: benchmarks/gpu_check.py covers TensorRT")
    with pytest.raises(MissingDependencyError, match="the TensorRT backend"):
        export_checkpoint(tiny_checkpoints("sasrec", "cpr"), tmp_path / "b", ExportConfig(format="tensorrt"))


@requires_tensorrt
@pytest.mark.parametrize("model,head", PAIRS)
def test_tensorrt_engine_matches_pytorch(tiny_checkpoints, tmp_path, model, head):
    out = tmp_path / "bundle"
    bundle = export_checkpoint(tiny_checkpoints(model, head), out, ExportConfig(format="tensorrt", validation_users=40),
                               echo=lambda s: None)
    assert (out / "model.plan").is_file() and [r["backend"] for r in bundle.manifest["parity"]] == [
        "onnxruntime", "tensorrt"]


@requires_tensorrt
@pytest.mark.parametrize("head,exclude_seen", [("softmax", True), ("cpr", False)])
def test_tensorrt_engine_of_a_catalog_scored_by_blocks_matches_pytorch(tiny_checkpoints, tmp_path, head, exclude_seen):
    config = ExportConfig(format="tensorrt", validation_users=40, exclude_seen=exclude_seen, catalog_block=128)
    bundle = export_checkpoint(tiny_checkpoints("sasrec", head, num_items=700), tmp_path / "bundle", config,
                               echo=lambda s: None)
    assert [r["backend"] for r in bundle.manifest["parity"]] == ["onnxruntime", "tensorrt"] and bundle.manifest["valid"]


@requires_tensorrt
def test_tensorrt_engine_runs_the_custom_pointer_op(tiny_checkpoints, tmp_path):
    config = ExportConfig(format="tensorrt", pointer_op="custom", validation_users=40)
    bundle = export_checkpoint(tiny_checkpoints("sasrec", "cpr"), tmp_path / "bundle", config, echo=lambda s: None)
    assert bundle.manifest["valid"]  # the plugin's engine held parity with PyTorch
    assert [r["backend"] for r in bundle.manifest["parity"]] == ["onnxruntime", "tensorrt"]


def _interrupted_export(how: str):
    """A stand-in for torch.onnx.export that fails as it does when Ctrl-C lands inside it: its own error,
    the KeyboardInterrupt as the cause, the context, or further down the chain."""
    def export(*args, **kwargs):
        if how == "cause":
            raise RuntimeError("Failed to export the model with torch.export") from KeyboardInterrupt()
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ValueError("while tracing")  # __context__: the interrupt
        except ValueError as inner:
            if how == "context":
                raise
            raise RuntimeError("TorchExportError: Failed to export") from inner  # deeper: cause -> context
    return export


@pytest.mark.parametrize("how", ["cause", "context", "deeper"])
def test_an_interrupt_inside_torch_onnx_export_stays_an_interrupt(tiny_checkpoints, tmp_path, monkeypatch, how):
    """Ctrl-C during the export is an interrupt (exit 130, as train and score), not an ExportError."""
    from click.testing import CliRunner

    from seqrec.cli import main

    monkeypatch.setattr(torch.onnx, "export", _interrupted_export(how))
    checkpoint = tiny_checkpoints("sasrec", "softmax")
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(checkpoint, tmp_path / "bundle", ExportConfig(validation_users=8), echo=lambda s: None)
    assert not (tmp_path / "bundle").exists() and list(tmp_path.iterdir()) == []  # no staging left behind
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 130 and "Interrupted" in result.output, result.output
    assert "torch.onnx.export" not in result.output


def test_other_errors_inside_torch_onnx_export_are_one_export_error(tiny_checkpoints, tmp_path, monkeypatch):
    def export(*args, **kwargs):
        raise RuntimeError("unsupported operator") from ValueError("deep down")

    monkeypatch.setattr(torch.onnx, "export", export)
    with pytest.raises(ExportError, match=r"torch.onnx.export of the scoring graph \| received RuntimeError: "
                                          r"unsupported operator"):
        export_checkpoint(tiny_checkpoints("sasrec", "softmax"), tmp_path / "bundle", ExportConfig(validation_users=8),
                          echo=lambda s: None)


def test_the_weights_are_a_file_of_their_own_that_the_manifest_records(exported):
    """ONNX Runtime maps model.onnx.data instead of copying it: the graph file holds no weight but tiny constants,
    however small the model (one protobuf was the exporter's default below 2 GB)."""
    import onnx

    out, _ = exported("sasrec", "softmax")
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    external = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer
                if tensor.data_location == onnx.TensorProto.EXTERNAL}
    inline = [len(tensor.raw_data) for tensor in graph.initializer if tensor.name not in external]
    table = load_checkpoint(exported_source(out)).model.item_embedding.weight
    assert tuple(table.shape) in external.values() and max(inline, default=0) < 1024
    assert {entry.value for tensor in graph.initializer for entry in tensor.external_data
            if entry.key == "location"} == {"model.onnx.data"}
    assert (out / "model.onnx.data").stat().st_size >= table.numel() * 4
    assert load_bundle(out).manifest["weights"] == {"file": "model.onnx.data",
                                                    "bytes": (out / "model.onnx.data").stat().st_size}


@pytest.mark.parametrize("custom_ops", [False, True])
@pytest.mark.parametrize("damage, said", [("emptied", "No graph was found in the protobuf"),
                                          ("cut short", "Protobuf parsing failed|Error parsing message"),
                                          ("zeroed", "Protobuf parsing failed|Error parsing message")])
def test_a_graph_onnx_runtime_cannot_load_is_one_export_error_naming_it(exported, tmp_path, damage, said, custom_ops):
    """Every command that opens a bundle's session (score, profile, export's parity check) goes through the runner:
    ONNX Runtime's own error (or protobuf's, on the custom-op path, which parses the graph first) was a traceback."""
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(exported("sasrec", "softmax")[0], copy)
    graph = copy / "model.onnx"
    size = graph.stat().st_size
    graph.write_bytes({"emptied": b"", "cut short": graph.read_bytes()[:size // 2], "zeroed": bytes(size)}[damage])
    runner = OnnxRuntimeRunner(graph, ("items",), custom_ops=custom_ops)
    with pytest.raises(ExportError, match=rf"ONNX model '{graph}' \| received a model ONNX Runtime could not load "
                                          rf"\(.*({said}).*\), expected model.onnx as seqrec export wrote it, with "
                                          r"its model.onnx.data beside it \(copy the whole bundle, or export it again\)"):
        runner.activate()
    assert not runner.active


def test_a_plan_tensorrt_cannot_deserialize_is_one_export_error_naming_it(tmp_path, monkeypatch):
    """TensorRT returns no engine (its reason in its log) for a damaged plan, or one built by another TensorRT or
    for another GPU: the runner went on to an AttributeError on None. tensorrt is a stand-in here (no GPU); the
    real deserialisation runs in benchmarks/gpu_check.py where a GPU is lent."""
    from types import SimpleNamespace

    from seqrec.exporter import tensorrt

    class Logger:
        WARNING = 2

        def __init__(self, severity): ...

    class Runtime:
        def __init__(self, logger): ...

        def deserialize_cuda_engine(self, plan: bytes):
            return None

    monkeypatch.setattr(tensorrt, "require_tensorrt", lambda: SimpleNamespace(__version__="10.9", Logger=Logger,
                                                                              Runtime=Runtime))
    plan = tmp_path / "model.plan"
    plan.write_bytes(bytes(64))
    runner = tensorrt.TensorRTRunner(plan, ("items",))
    with pytest.raises(ExportError, match=rf"TensorRT engine '{plan}' \| received a plan TensorRT could not "
                                          r"deserialize \(see the TensorRT log above.*expected model.plan as seqrec "
                                          r"export --format tensorrt built it with TensorRT 10.9 for this GPU"):
        runner.activate()
    assert not runner.active


def exported_source(bundle) -> str:
    return json.loads((bundle / "manifest.json").read_text())["source"]["checkpoint"]


@pytest.mark.parametrize("damage", ["missing", "cut short"])
def test_a_bundle_copied_without_its_whole_weights_file_is_refused_on_load(exported, tmp_path, damage):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(exported("sasrec", "softmax")[0], copy)
    weights = copy / "model.onnx.data"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:-4])
    expected = "no such file" if damage == "missing" else "bytes"
    with pytest.raises(ExportError, match=f"model.onnx.data.*{expected}.*copy the whole bundle"):
        load_bundle(copy)


@pytest.mark.parametrize("damage", ["emptied", "cut short"])
def test_a_bundle_whose_graph_file_was_cut_short_is_refused_on_load(exported, tmp_path, damage):
    """The manifest records model.onnx's size as it does the weights': a graph cut short is refused by every command
    before any work, where no session is opened yet (the Ray engine's driver never opens one)."""
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(exported("sasrec", "softmax")[0], copy)
    graph = copy / "model.onnx"
    size = graph.stat().st_size
    assert load_bundle(copy).manifest["graph"] == {"file": "model.onnx", "bytes": size}
    left = 0 if damage == "emptied" else size // 2
    graph.write_bytes(graph.read_bytes()[:left])
    with pytest.raises(ExportError, match=rf"export bundle graph {graph} \| received {left:,} bytes, expected {size:,} "
                                          r"bytes, as written by seqrec export \(copy the whole bundle directory\)"):
        load_bundle(copy)


def test_a_bundle_whose_manifest_records_no_weights_file_still_loads(exported, tmp_path):
    """Bundles exported before the weights always had their own file (or before the graph's size was recorded):
    nothing recorded, nothing checked."""
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(exported("sasrec", "softmax")[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["weights"], manifest["graph"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(copy).manifest["valid"]


def test_the_custom_op_runner_finds_the_weights_from_any_working_directory(exported, tmp_path, monkeypatch):
    """Its session is built from the graph's bytes, which name the weights file relative to the graph, not to the cwd."""
    out, _ = exported("sasrec", "cpr", pointer_op="custom")
    monkeypatch.chdir(tmp_path)
    items = np.random.default_rng(6).integers(1, 40, (4, 9))
    with OnnxRuntimeRunner(out / "model.onnx", ("items",), custom_ops=True) as runner:
        assert runner.infer({"items": items})["top_items"].shape == (4, 7)


def test_the_custom_op_runner_reads_the_weights_beside_a_linked_graph(exported, tmp_path):
    """A bundle laid out with model.onnx a link into a store of graphs: the weights are the ones beside the link, as
    ONNX Runtime finds them for a plain bundle."""
    import shutil

    out, _ = exported("sasrec", "cpr", pointer_op="custom")
    (tmp_path / "store").mkdir()
    shutil.copy(out / "model.onnx", tmp_path / "store" / "graph.onnx")
    layout = tmp_path / "layout"
    layout.mkdir()
    shutil.copy(out / "model.onnx.data", layout / "model.onnx.data")
    (layout / "model.onnx").symlink_to(tmp_path / "store" / "graph.onnx")
    items = np.random.default_rng(7).integers(1, 40, (3, 9))
    with OnnxRuntimeRunner(layout / "model.onnx", ("items",), custom_ops=True) as runner:
        assert runner.infer({"items": items})["top_items"].shape == (3, 7)


def test_a_long_window_lowers_the_default_parity_users_says_so_and_the_manifest_records_them(
        tiny_checkpoints, tmp_path, monkeypatch):
    """The default 200 random users at a window of 8,192 took 25 minutes; ``--validation-users`` still sets any
    number. Scaled down: a budget that fits 24 users of this model's window."""
    from seqrec.exporter import validate

    checkpoint = tiny_checkpoints("sasrec", "softmax")
    heads, window = 2, 12  # write_tiny_checkpoint's
    monkeypatch.setattr(validate, "VALIDATION_ATTENTION", 24 * heads * window ** 2)
    monkeypatch.setattr(validate, "EDGE_ATTENTION", 3 * heads * window ** 2)
    lines: list[str] = []
    export_checkpoint(checkpoint, tmp_path / "b", ExportConfig(), echo=lines.append)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    users = {case["name"]: case["users"] for case in manifest["parity"][0]["cases"]}
    assert users["random users"] == 24 and users["full length"] == 3 and users["no known item"] == 3
    assert manifest["export"]["validation_users"] == 24 and manifest["valid"]
    assert lines[0].startswith("parity check on 24 random users and 3 per edge case") and "8x as long" in lines[0]
    export_checkpoint(checkpoint, tmp_path / "b", ExportConfig(validation_users=30), echo=lines.append)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["parity"][0]["cases"][0]["users"] == 30 and manifest["export"]["validation_users"] == 30
