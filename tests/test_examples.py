"""The examples run as a user runs them, and show what they say they show."""

from __future__ import annotations

import re
import subprocess
import sys

from support import EXAMPLES


def run_example(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_attention_seq2seq_records_the_lstm_encoder_and_the_lstmcell_decoder():
    out = run_example("seq2seq_attention.py", "--steps", "2", "--length", "6")
    rows = dict(re.findall(r"^  (\S+)\s+(\d+) steps", out, re.M))
    assert rows == {"encoder.l0": "6", "encoder.l0/c": "6", "decoder": "6", "decoder/c": "6"}
    assert "verdict:" in out


def test_the_tutorial_decoder_is_one_row_of_every_decoded_step():
    out = run_example("tutorial_decoder.py", "--steps", "2", "--length", "7")
    assert "decoder GRU calls 7, one row of 7 steps" in out
    assert re.search(r"^  decoder\.gru\.l0 .*(\S+e-?\d+ ){6}\S+e-?\d+$", out, re.M), out


def test_a_marked_diagonal_recurrence_gets_a_row_per_layer():
    out = run_example("diagonal_recurrence.py", "--seq-len", "12", "--steps", "2")
    assert "rows: ['mingru.l0', 'mingru.l1']" in out
    assert re.search(r"^verdict: \w+", out, re.M)
