"""The TensorBoard events of a run directory, read back with tensorboard's own reader."""

from __future__ import annotations

import pytest
import torch

import rnnscope
from support import tiny_run


def test_run_directory_is_a_tensorboard_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_run(tmp_path, probe={"every": 2, "histograms": True})
    rnnscope.train(config)
    everything = {"images": 0, "histograms": 0}  # 0: keep every event, not a sample
    events = EventAccumulator(str(tmp_path / "run"), size_guidance=everything).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/grad_norm", "train/lr", "train/clip_rate", "valid/mse",
            "flow/reach"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))
    assert {"flow/profile", "flow/heatmap"} <= set(tags["images"])
    heatmaps = events.Images("flow/heatmap")
    assert [image.step for image in heatmaps] == [3, 6]  # on the eval schedule
    assert heatmaps[-1].encoded_image_string.startswith(b"\x89PNG")
    assert heatmaps[-1].width > 300 and heatmaps[-1].height > 200
    assert "grad/rnn.weight_hh_l0" in tags["histograms"]
    histogram = events.Histograms("grad/rnn.weight_hh_l0")
    assert [event.step for event in histogram] == [1, 2, 4, 6]  # the probe schedule
    weight_hh = torch.load(tmp_path / "run" / "checkpoints" / "last.pt",
                           weights_only=True)["model"]["rnn.weight_hh_l0"]
    assert histogram[-1].histogram_value.num == weight_hh.numel()


def test_tensorboard_heatmap_of_a_resumed_run_keeps_the_earlier_probes(tmp_path):
    from rnnscope.rundir.tensorboard import TensorBoardLog

    rnnscope.train(tiny_run(tmp_path, probe={"every": 2}))
    board = TensorBoardLog(tmp_path / "run", purge_step=5)  # as --resume from step 4
    try:
        assert [probe["step"] for probe in board.probes] == [1, 2, 4]
        assert board.probes[0]["flow"]["layers"] == ["rnn.l0", "rnn.l0/c"]  # an LSTM: h and c
    finally:
        board.close()


def test_tensorboard_heatmap_keeps_at_most_its_rows_evenly_spaced(tmp_path):
    from rnnscope.rundir.tensorboard import HEATMAP_ROWS, TensorBoardLog

    board = TensorBoardLog(tmp_path)
    try:
        for step in range(1, 1001):
            board._keep_probe({"step": step, "flow": {"layers": ["rnn.l0"], "norms": [[1.0]]}})
        steps = [probe["step"] for probe in board.probes]
        assert len(steps) <= HEATMAP_ROWS and steps[0] == 1
        assert len({b - a for a, b in zip(steps[:-1], steps[1:], strict=True)}) == 1
        assert steps[-1] > 1000 - (steps[1] - steps[0])  # reaches the latest probes
    finally:
        board.close()


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e-6, 1.0, 1e19, 1e25])
def test_histograms_have_the_buckets_of_tensorboards_own(tmp_path, scale):
    """Binned by torch (searchsorted, not numpy's sort) into the very buckets, limits and
    trimming of `add_histogram`'s default; values beyond its last bucket give none,
    where `add_histogram` would raise."""
    from torch.utils.tensorboard.summary import make_histogram

    from rnnscope.rundir.tensorboard import TensorBoardLog, histogram_buckets

    board = TensorBoardLog(tmp_path)
    try:
        generator = torch.Generator().manual_seed(0)
        values = torch.randn(4096, generator=generator) * scale + 3 * scale
        if scale < 1e20:
            values[::9] = 0.0
            values[:2] = torch.tensor(board.writer.default_bins[:2])  # on bucket edges
        buckets = histogram_buckets(values, board._edges)
        if scale > 1e20:
            assert buckets is None
            with pytest.raises(ValueError, match="histogram is empty"):
                make_histogram(values.double().numpy(), board.writer.default_bins)
            return
        expected = make_histogram(values.double().numpy(), board.writer.default_bins)
        limits, counts, flat = buckets
        assert limits == list(expected.bucket_limit) and counts == list(expected.bucket)
        assert flat.numel() == expected.num
        board.histogram("grad/w", values, 1)
    finally:
        board.close()
