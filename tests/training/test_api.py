"""``seqrec eval``'s library function on real small Parquet files: ids read in the vocabulary's type."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec.errors import DataError
from seqrec.training import evaluate_checkpoint, load_checkpoint


def with_item_ids(table: pa.Table, ids) -> pa.Table:
    return table.set_column(table.schema.get_field_index("item_id"), "item_id", ids)


def test_eval_reads_ids_in_the_vocabularys_type_as_score_does(tiny_checkpoint, synth_parquet, tmp_path):
    """A model trained from a RecBole .inter file has a string vocabulary (its tokens import as strings): eval
    refused the same interactions with integer ids ("received int64, expected string ids") where `seqrec score`
    converts ids to the vocabulary's type and scores them. Both directions now give the metrics of the file
    whose ids have the vocabulary's own type. Text is an integer only as the integer prints, as score reads it:
    zero-padded text is other ids, unknown to an integer vocabulary, never silently the integers."""
    import pyarrow.compute as pc
    from click.testing import CliRunner

    from seqrec.cli import main

    table = pq.read_table(synth_parquet)
    text = tmp_path / "text.parquet"
    pq.write_table(with_item_ids(table, table.column("item_id").cast(pa.string())), text)
    padded = tmp_path / "padded.parquet"
    pq.write_table(with_item_ids(table, pc.utf8_lpad(table.column("item_id").cast(pa.string()), 8, "0")), padded)
    text_checkpoint = tmp_path / "text_checkpoint"  # the same model, its vocabulary's ids as text
    shutil.copytree(tiny_checkpoint, text_checkpoint)
    vocab = pq.read_table(tiny_checkpoint / "vocab.parquet")
    pq.write_table(with_item_ids(vocab, vocab.column("item_id").cast(pa.string())), text_checkpoint / "vocab.parquet")
    assert load_checkpoint(text_checkpoint).vocab.raw_type == "string"
    expected = evaluate_checkpoint(tiny_checkpoint, synth_parquet, "test", by_repeat=True)
    assert expected["all"]["ndcg@10"] > 0 and expected["unknown_interactions"] == 0
    for checkpoint, data in [(text_checkpoint, text), (text_checkpoint, synth_parquet), (tiny_checkpoint, text)]:
        assert evaluate_checkpoint(checkpoint, data, "test", by_repeat=True) == expected, (checkpoint.name, data.name)
    with pytest.raises(DataError, match=r"padded.parquet \| received none in the checkpoint's vocabulary"):
        evaluate_checkpoint(tiny_checkpoint, padded, "test")
    result = CliRunner().invoke(main, ["eval", str(text_checkpoint), "--data", str(synth_parquet), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == evaluate_checkpoint(tiny_checkpoint, synth_parquet, "test")


def test_text_ids_that_are_no_integers_are_distinct_unknown_items_to_an_integer_vocabulary(tiny_checkpoint,
                                                                                           synth_parquet, tmp_path):
    """As `seqrec score` cannot read them as ids of an integer vocabulary, eval counts them unknown; each its
    own item (not all one, nor the placeholder 0): two different ones are no repeat, the same one twice is."""
    table = pq.read_table(synth_parquet)
    users = np.unique(table.column("user_id").to_numpy())
    late = table.column("timestamp").to_numpy().max() + np.array([1, 2])
    same = users % 2 == 0  # these users' last two items are one unknown item, the others' two different ones
    numbers = np.stack([np.full(len(users), 10**9), np.where(same, 10**9, 10**9 + 1)], axis=1)  # (U, 2)
    added = pa.table({"user_id": np.repeat(users, 2), "item_id": numbers.reshape(-1),
                      "timestamp": np.tile(late, len(users))}).cast(table.schema)
    pq.write_table(pa.concat_tables([table, added]), tmp_path / "ints.parquet")
    words = pa.array(np.where(numbers.reshape(-1) == 10**9, "0x3b9aca00", "1e9+1").tolist())  # no decimal integers
    pq.write_table(pa.concat_tables([with_item_ids(table, table.column("item_id").cast(pa.string())),
                                    with_item_ids(added, words)]), tmp_path / "words.parquet")
    expected = evaluate_checkpoint(tiny_checkpoint, tmp_path / "ints.parquet", "test", by_repeat=True)
    assert expected["repeat"]["users"] == same.sum() and expected["unknown_targets"] == len(users)
    assert evaluate_checkpoint(tiny_checkpoint, tmp_path / "words.parquet", "test", by_repeat=True) == expected
