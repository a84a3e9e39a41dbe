"""Language modelling on small text files the tests write: layout, vocabulary, baseline, errors."""

from __future__ import annotations

import math

import pytest
import torch

from rnnscope.flow.bptt import truncated_bptt
from rnnscope.models.sequence import SequenceModel
from rnnscope.tasks import get_task
from rnnscope.tasks.text import EOS, UNK, TextTask

PANGRAM = "the quick brown fox jumps over the lazy dog.\n"


def write(tmp_path, text: str | bytes, name: str = "corpus.txt") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def decode(task: TextTask, ids) -> str:
    return "".join(task.vocab[i] for i in ids.tolist())


def test_registered_and_sized(tmp_path):
    task = get_task("text", path=write(tmp_path, PANGRAM * 20), seq_len=7)
    assert isinstance(task, TextTask) and task.name == "text"
    assert task.input_size == task.output_size == len(task.vocab) == len(set(PANGRAM)) + 1
    assert task.vocab[0] == UNK and task.metric_name == "bits_per_char"
    assert task.solved_below is None and task.seq_len == 7


def test_held_out_tail_is_the_last_fraction_of_the_stream(tmp_path):
    text = PANGRAM * 20  # 900 characters: 90 held out
    task = TextTask(write(tmp_path, text), valid_fraction=0.1)
    assert decode(task, task.tokens["train"]) == text[:810]
    assert decode(task, task.tokens["valid"]) == text[810:]


@pytest.mark.parametrize("split", ["train", "valid"])
@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_windows_reassemble_the_stream_exactly(tmp_path, split, batch_size):
    text = PANGRAM * 20
    task = TextTask(write(tmp_path, text), seq_len=6, valid_fraction=0.2)
    windows = list(task.windows(split, batch_size))
    assert all(len(x) == 6 for x, _ in windows[:-1]) and 1 <= len(windows[-1][0]) <= 6
    inputs = torch.cat([x.argmax(-1) for x, _ in windows])  # [N - 1, B]
    targets = torch.cat([y for _, y in windows])
    assert torch.equal(targets[:-1], inputs[1:])  # targets are the inputs one step on
    columns = torch.cat([inputs, targets[-1:]])  # each column's tokens, in order
    assert torch.equal(columns, task.batchify(split, batch_size))
    rows = len(task.tokens[split]) // batch_size
    assert columns.shape == (rows, batch_size)
    # Column b is the b-th contiguous stretch of the split; only the remainder is dropped.
    part = text[:720] if split == "train" else text[720:]
    assert decode(task, columns.t().reshape(-1)) == part[: rows * batch_size]


def test_one_hot_inputs(tmp_path):
    task = TextTask(write(tmp_path, PANGRAM * 20), seq_len=5)
    inputs, targets = task.batch(4, torch.Generator().manual_seed(0))
    assert inputs.shape == (5, 4, task.input_size) and inputs.dtype == torch.float32
    assert targets.shape == (5, 4) and targets.dtype == torch.int64
    assert torch.equal(inputs.sum(-1), torch.ones(5, 4))
    assert set(inputs.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(inputs[1:].argmax(-1), targets[:-1])


@pytest.mark.parametrize("split", ["train", "valid"])
def test_batches_are_windows_of_the_split_and_never_cross_the_boundary(tmp_path, split):
    task = TextTask(write(tmp_path, PANGRAM * 20), seq_len=6, valid_fraction=0.2)
    columns = task.batchify(split, 5)
    runs = {tuple(columns[s : s + 7, b].tolist())
            for b in range(5) for s in range(len(columns) - 6)}
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        inputs, targets = task.batch(5, generator, split)
        whole = torch.cat([inputs.argmax(-1), targets[-1:]])
        assert all(tuple(whole[:, b].tolist()) in runs for b in range(5))


def test_vocabulary_comes_from_training_text_only(tmp_path):
    # Training part "aaabba" (a x4, b x2); the tail "bxyb" holds x and y, never seen before.
    task = TextTask(write(tmp_path, "aaabbabxyb"), seq_len=2, valid_fraction=0.4)
    assert task.vocab == [UNK, "a", "b"]
    assert task.tokens["valid"].tolist() == [2, 0, 0, 2]


def test_unigram_baseline_in_bits_per_char_is_exact(tmp_path):
    # train "aaab": counts <unk> 0, a 3, b 1 -> add-one p = 1/7, 4/7, 2/7; tail "abcc".
    task = TextTask(write(tmp_path, "aaababcc"), seq_len=2, valid_fraction=0.5)
    cross_entropy = -(math.log(4 / 7) + math.log(2 / 7) + 2 * math.log(1 / 7)) / 4
    assert task.baseline == pytest.approx(cross_entropy / math.log(2), rel=1e-12)


def test_unigram_baseline_in_perplexity_is_exact(tmp_path):
    # Tokens: a a b <eos> a c <eos> | b d <eos> (30% tail = 3 tokens).
    task = TextTask(write(tmp_path, "a a b\na c\nb d\n"), level="word", seq_len=2,
                    valid_fraction=0.3)
    assert task.vocab == [UNK, "a", EOS, "b", "c"] and task.metric_name == "perplexity"
    # Seven training tokens, five words: p(b) = 2/12, p(<unk>) = 1/12, p(<eos>) = 3/12.
    cross_entropy = -(math.log(2 / 12) + math.log(1 / 12) + math.log(3 / 12)) / 3
    assert task.baseline == pytest.approx(math.exp(cross_entropy), rel=1e-12)


def test_word_level_tokens_max_vocab_and_unk(tmp_path):
    text = "the cat sat\n\nthe cat ran away\nthe dog sat\n" * 3 + "the emu sat\n"
    # 46 tokens (every line ends in <eos>, the blank one too); the last 4 are held out.
    task = TextTask(write(tmp_path, text), level="word", seq_len=3, valid_fraction=0.09,
                    max_vocab=5)
    # Counts in training: <eos> 12, the 9, cat 6, sat 6, ... -> four kept, the rest <unk>.
    assert task.vocab == [UNK, EOS, "the", "cat", "sat"]
    assert decode_words(task, task.tokens["valid"]) == ["the", UNK, "sat", EOS]
    assert decode_words(task, task.tokens["train"][:5]) == ["the", "cat", "sat", EOS, EOS]
    assert task.tokens["train"].tolist().count(0) == 3 * 3  # ran, away, dog per repeat


def decode_words(task: TextTask, ids) -> list[str]:
    return [task.vocab[i] for i in ids.tolist()]


def test_a_literal_unk_in_the_text_is_the_unk_token(tmp_path):
    task = TextTask(write(tmp_path, "a <unk> b a\n" * 4), level="word", seq_len=2,
                    valid_fraction=0.2)
    assert task.vocab.count(UNK) == 1 and UNK not in task.vocab[1:]
    assert task.tokens["train"][1] == 0


def test_loss_and_metrics(tmp_path):
    char = TextTask(write(tmp_path, PANGRAM * 10), seq_len=4)
    inputs, targets = char.batch(3, torch.Generator().manual_seed(0))
    output = torch.randn(4, 3, char.output_size, generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.cross_entropy(output.reshape(12, -1), targets.reshape(12))
    torch.testing.assert_close(char.loss(output, targets), expected)
    torch.testing.assert_close(char.metric(output, targets), expected / math.log(2))
    word = TextTask(write(tmp_path, PANGRAM * 10, "words.txt"), level="word", seq_len=4)
    inputs, targets = word.batch(3, torch.Generator().manual_seed(0))
    output = torch.randn(4, 3, word.output_size)
    torch.testing.assert_close(word.metric(output, targets), word.loss(output, targets).exp())


def test_batches_are_deterministic_by_seed(tmp_path):
    task = TextTask(write(tmp_path, PANGRAM * 20), seq_len=5)
    first = task.batch(4, torch.Generator().manual_seed(7), "valid")
    second = task.batch(4, torch.Generator().manual_seed(7), "valid")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    draws = {task.batch(4, torch.Generator().manual_seed(s))[1].sum().item() for s in range(8)}
    assert len(draws) > 1


def test_batch_size_too_large_for_the_split(tmp_path):
    task = TextTask(write(tmp_path, PANGRAM * 20), seq_len=5)
    with pytest.raises(ValueError, match="batch_size: 20 columns of the valid split"):
        task.batch(20, torch.Generator(), "valid")
    with pytest.raises(ValueError, match="task.batch_size: must be an integer >= 1"):
        task.batchify("train", 0)
    with pytest.raises(ValueError, match="split: unknown 'test'"):
        task.batchify("test", 1)


@pytest.mark.parametrize(("case", "settings", "message"), [
    ("missing", {}, "task.path: no such file: {path}"),
    ("directory", {}, "task.path: is a directory, not a file: {dir}"),
    ("latin-1", {}, "{path}: not UTF-8 text (byte 0xe9 at offset 3)"),
    ("empty", {}, "{path}: empty: no characters"),
    ("blank", {"level": "word"}, "{path}: empty: no words"),
    ("short", {"seq_len": 9}, "{path}: too short: 90 characters give 81 for training and 9 "
                              "for validation; each needs at least seq_len + 1 = 10"),
    ("fine", {"level": "byte"}, "task.level: unknown 'byte'; accepted: char, word"),
    ("fine", {"valid_fraction": 0.0}, "task.valid_fraction: must be in (0, 0.5], got 0.0"),
    ("fine", {"valid_fraction": 0.6}, "task.valid_fraction: must be in (0, 0.5], got 0.6"),
    ("fine", {"seq_len": 1}, "task.seq_len: must be an integer >= 2, got 1"),
    ("fine", {"seq_len": "35"}, "task.seq_len: must be an integer >= 2, got '35'"),
    ("fine", {"max_vocab": 1}, "task.max_vocab: must be an integer >= 2, got 1"),
])
def test_bad_input_is_one_line_naming_the_file_or_field(tmp_path, case, settings, message):
    path = tmp_path / "corpus.txt"
    contents = {"latin-1": "caf\xe9".encode("latin-1"), "empty": b"", "blank": b"  \t ",
                "short": PANGRAM.encode() * 2, "fine": PANGRAM.encode() * 4}
    if case in contents:
        path.write_bytes(contents[case])
    target = tmp_path if case == "directory" else path
    with pytest.raises(ValueError) as info:
        TextTask(str(target), **settings)
    text = str(info.value)
    assert "\n" not in text
    assert message.format(path=path, dir=tmp_path) in text


def test_a_byte_order_mark_is_not_a_character(tmp_path):
    task = TextTask(write(tmp_path, "\ufeff" + PANGRAM * 4), seq_len=3)
    assert "\ufeff" not in task.vocab


def test_fits_truncated_bptt_with_the_state_carried_between_windows(tmp_path):
    task = TextTask(write(tmp_path, PANGRAM * 6), seq_len=8)
    torch.manual_seed(0)
    model = SequenceModel("lstm", task.input_size, 16, task.output_size)

    def gradients():
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return grads

    # The documented loop: windows in order, state carried (truncated_bptt detaches it).
    state, total, count = None, torch.zeros(()), 0
    for inputs, targets in task.windows("train", 4):
        result = truncated_bptt(model, inputs,
                                lambda out, a, b, y=targets: task.loss(out, y[a:b]), state=state)
        state, total, count = result.state, total + result.loss, count + 1
    assert count > 3 and torch.isfinite(total)
    by_windows = gradients()

    # The same as one truncated_bptt call over the whole one-hot stream, window = seq_len.
    columns = task.batchify("train", 4)
    inputs, targets = task.one_hot(columns[:-1]), columns[1:]
    result = truncated_bptt(model, inputs, lambda out, a, b: task.loss(out, targets[a:b]),
                            window=task.seq_len)
    assert len(result.windows) == count
    torch.testing.assert_close(result.loss, total)
    for mine, theirs in zip(by_windows, gradients(), strict=True):
        torch.testing.assert_close(mine, theirs)
