"""Interaction data: schema checks, importers, vocabulary, sequences, splits, synthetic data."""

from seqrec.data.fingerprint import table_fingerprint
from seqrec.data.importers import FORMATS, convert_interactions, import_interactions, write_interactions
from seqrec.data.schema import read_interactions, validate_interactions
from seqrec.data.sequences import UserSequences, build_sequences, pad_left
from seqrec.data.split import EvalExamples, Split, leave_one_out, split_by_name
from seqrec.data.stats import interaction_stats
from seqrec.data.synth import SynthConfig, generate_interactions, synthesize_to
from seqrec.data.vocab import Vocabulary

__all__ = [
    "FORMATS",
    "EvalExamples",
    "Split",
    "SynthConfig",
    "UserSequences",
    "Vocabulary",
    "build_sequences",
    "convert_interactions",
    "generate_interactions",
    "import_interactions",
    "interaction_stats",
    "leave_one_out",
    "pad_left",
    "read_interactions",
    "split_by_name",
    "synthesize_to",
    "table_fingerprint",
    "validate_interactions",
    "write_interactions",
]
