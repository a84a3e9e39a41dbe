"""Language modelling over a UTF-8 text file, laid out for truncated BPTT.

As in pytorch/examples `word_language_model`: the file becomes one token stream
(`level="char"`: its characters; `level="word"`: whitespace-separated words and
an `<eos>` token at the end of every line). The last `valid_fraction` of the
stream is held out. The vocabulary is built from the training part only: its
`max_vocab - 1` most frequent tokens (ties: first seen first) plus `<unk>`, which
stands for everything else, so validation tokens never seen in training are
`<unk>`. Inputs are one-hot [T, B, V]; targets are the next token ids [T, B];
the loss is the mean cross-entropy over all steps. The metric is bits per
character (char level, loss / ln 2) or perplexity (word level, exp(loss)).

Training with truncated BPTT, the hidden state carried across windows (the
loop of `word_language_model`; `truncated_bptt` detaches the state it is given):

    state = None
    for inputs, targets in task.windows("train", batch_size):
        result = truncated_bptt(model, inputs,
                                lambda out, a, b: task.loss(out, targets[a:b]), state=state)
        state = result.state  # then clip and step the optimiser

`batch` draws one such window at random, for the trainer's generic loop.
Characters are the file's own (a "\r\n" is two of them); at word level line
endings of either kind end a line.

Baseline: a model that ignores its inputs can learn at best the unigram
distribution of the training tokens. With add-one smoothing, so that `<unk>`
(possibly never seen in training) keeps a non-zero probability,
    p(v) = (count_train(v) + 1) / (N_train + V),
and the baseline is the metric of -mean log p over all validation tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnscope.checks import choice, integer, number
from rnnscope.tasks import register_task
from rnnscope.tasks.base import (
    SPLITS,
    Task,
    read_utf8,
)

LEVELS = ("char", "word")
UNK, EOS = "<unk>", "<eos>"


def tokenize(text: str, level: str) -> str | list[str]:
    """The token stream: the text itself for characters (a str is a sequence of them)."""
    if level == "char":
        return text
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":  # a final newline ends the last line; it does not start another
        lines.pop()
    return [token for line in lines for token in (*line.split(), EOS)]


@register_task("text")
class TextTask(Task):
    scored_steps = "every"  # the next token is predicted at every step

    def __init__(self, path: str, level: str = "char", seq_len: int = 35,
                 valid_fraction: float = 0.1, max_vocab: int = 10000) -> None:
        if level not in LEVELS:
            raise ValueError(f"task.level: unknown {level!r}; accepted: {', '.join(LEVELS)}")
        self.level = level
        self.seq_len = integer("task.seq_len", seq_len, 2)
        self.valid_fraction = number("task.valid_fraction", valid_fraction, above=0.0, maximum=0.5)
        self.max_vocab = integer("task.max_vocab", max_vocab, 2)
        self.path, text = read_utf8(path)
        if not (text if level == "char" else text.split()):
            nothing = "characters" if level == "char" else "words"
            raise ValueError(f"{self.path}: empty: no {nothing} to model")
        tokens = tokenize(text, level)
        valid_count = round(self.valid_fraction * len(tokens))
        cut = len(tokens) - valid_count
        need = self.seq_len + 1
        if min(cut, valid_count) < need:
            raise ValueError(
                f"{self.path}: too short: {len(tokens)} {self._unit} give {cut} for training "
                f"and {valid_count} for validation; each needs at least seq_len + 1 = {need}")

        counts = Counter(tokens[:cut])
        kept = [token for token, _ in counts.most_common() if token != UNK]
        self.vocab: list[str] = [UNK, *kept[: self.max_vocab - 1]]
        self.index = {token: i for i, token in enumerate(self.vocab)}
        stream = self.encode(tokens)
        self.tokens = {"train": stream[:cut], "valid": stream[cut:]}
        self.input_size = self.output_size = len(self.vocab)
        self.metric_name = "bits_per_char" if level == "char" else "perplexity"
        self.baseline = float(self._to_metric(self._unigram_cross_entropy()))
        self.solved_below = None  # language models are compared by curves, not a threshold

    def encode(self, tokens: str | list[str]) -> Tensor:
        """Token ids [N]; tokens outside the vocabulary become <unk> (0)."""
        if isinstance(tokens, str):  # characters: look each distinct one up once
            codes = np.frombuffer(tokens.encode("utf-32-le"), dtype="<u4")
            distinct, where = np.unique(codes, return_inverse=True)
            ids = np.array([self.index.get(chr(c), 0) for c in distinct], dtype=np.int64)
            return torch.from_numpy(ids[where.reshape(-1)])
        return torch.from_numpy(np.fromiter((self.index.get(token, 0) for token in tokens),
                                            dtype=np.int64, count=len(tokens)))

    @property
    def _unit(self) -> str:
        return "characters" if self.level == "char" else "tokens"

    def _unigram_cross_entropy(self) -> Tensor:
        """-mean log p(v) over the validation tokens, p the add-one smoothed training unigram."""
        counts = torch.bincount(self.tokens["train"], minlength=len(self.vocab)).double()
        log_p = torch.log((counts + 1) / (counts.sum() + len(self.vocab)))
        return -log_p[self.tokens["valid"]].mean()

    def _to_metric(self, cross_entropy: Tensor) -> Tensor:
        return cross_entropy / math.log(2) if self.level == "char" else cross_entropy.exp()

    def batchify(self, split: str, batch_size: int) -> Tensor:
        """The split's token ids as `batch_size` columns [N, B]; the remainder is dropped.

            stream  a b c d e f g h i j k l m n        batch_size = 3
                    └─ column 0 ┘└─ column 1 ┘└─ column 2 ┘ (+ dropped tail)
            [N, B]  a f k
                    b g l     windows of seq_len rows run down the columns;
                    c h m     each column is a contiguous stretch of the text,
                    d i n     so the hidden state of column b carries over
                    e j ..    from one window to the next.
        """
        choice("split", split, SPLITS)
        integer("task.batch_size", batch_size, 1)
        stream = self.tokens[split]
        rows = len(stream) // batch_size
        if rows < 2:
            raise ValueError(f"batch_size: {batch_size} columns of the {split} split "
                             f"({len(stream)} tokens) leave fewer than 2 tokens per column")
        return stream[: rows * batch_size].view(batch_size, rows).t().contiguous()

    def one_hot(self, ids: Tensor) -> Tensor:
        return F.one_hot(ids, len(self.vocab)).float()

    def windows(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(inputs [T, B, V], targets [T, B]) for consecutive windows of `seq_len` steps down
        the batchified split (the last may be shorter): feed them in order and carry the
        hidden state, detached, from one to the next."""
        columns = self.batchify(split, batch_size)
        for start in range(0, len(columns) - 1, self.seq_len):
            steps = min(self.seq_len, len(columns) - 1 - start)
            yield (self.one_hot(columns[start : start + steps]),
                   columns[start + 1 : start + 1 + steps])

    def draw(self, batch_size: int, generator: torch.Generator,
             split: str) -> tuple[Tensor, Tensor]:
        """One window of `seq_len` steps from a random row of the batchified split."""
        columns = self.batchify(split, batch_size)
        starts = len(columns) - self.seq_len
        if starts < 1:
            raise ValueError(f"batch_size: {batch_size} columns of the {split} split leave "
                             f"{len(columns)} tokens per column; a window needs seq_len + 1 "
                             f"= {self.seq_len + 1}")
        start = int(torch.randint(0, starts, (), generator=generator))
        return (self.one_hot(columns[start : start + self.seq_len]),
                columns[start + 1 : start + 1 + self.seq_len])

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def metric(self, output: Tensor, target: Tensor) -> Tensor:
        return self._to_metric(self.loss(output, target))
