"""Several processes through `accelerate launch`, proven on CPU processes (gloo) with the tiny model.

A 2-process training step equals one process that averages the same two training points; 2-process
sampling equals 1-process sampling bit for bit; a failure in one process stops all with one line;
one process trains exactly the slider of the single-process loop.
"""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sliders.cli import train_main
from sliders.config import load_config
from sliders.distributed import Processes, process_seed
from sliders.network import read_slider_file
from sliders.optim import make_lr_scheduler, make_optimizer
from sliders.prompts import load_prompts
from sliders.trainer import _train_step, prepare_text

ACCELERATE = Path(sys.executable).parent / "accelerate"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# One thread per process, as `accelerate launch` sets for several CPU processes; MKL's conditional
# numerical reproducibility, without which its results depend on memory alignment (docs/distributed.md).
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"}


# Only a guard against a hung run: on a loaded 2-core machine two processes that each import torch and
# load the model can take minutes, and a tight limit fails a run that would have passed.
TIMEOUT = 1800


def launch(command: str, *args: str, processes: int = 2, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes N <sliders command> ...` as docs/distributed.md writes it."""
    env = {**os.environ, **ENV}
    return subprocess.run(
        [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         str(BIN / command), *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def text_config(tmp_path, tiny_model_dir, write_text_config):
    # eps 1: Adam's first step is about lr * gradient (not lr * its sign), so comparing sliders after one
    # step compares the averaged gradients, and float rounding stays rounding.
    return write_text_config(tmp_path, train={"iterations": 1, "lr": 1.0, "optimizer": "adamw",
                                              "optimizer_args": "eps=1.0", "seed": 5}, save={"per_steps": 100})


def _slider(tmp_path, name="size"):
    return tmp_path / "models" / f"{name}_alpha1.0_rank2_noxattn" / f"{name}_last.safetensors"


# --------------------------------------------------------------------------------------------------
# In one process
# --------------------------------------------------------------------------------------------------


def test_rank_zero_keeps_the_seed_and_other_ranks_get_their_own():
    assert process_seed(7, 0) == 7
    seeds = {process_seed(7, rank) for rank in range(1, 8)}
    assert len(seeds) == 7 and 7 not in seeds and all(0 <= s < 2**64 for s in seeds)
    assert process_seed(7, 3) == process_seed(7, 3) != process_seed(8, 3)


def test_one_process_communicates_nothing():
    one = Processes()
    assert one.is_main and not one.several and all(one.mine(i) for i in range(5))
    assert one.check(stop=True, loss=0.25) == (True, 0.25)
    with pytest.raises(ValueError, match="boom"):
        one.check(ValueError("boom"))
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.full((3,), 2.0)
    one.average_gradients([parameter])
    assert torch.equal(parameter.grad, torch.full((3,), 2.0))
    assert one.gather("x") == ["x"] and one.share("y") == "y" and one.sum([1, 2]) == [1.0, 2.0]


def test_a_command_closes_its_process_group_before_it_exits():
    """A process left with gloo's threads running can abort at interpreter exit, failing a launched
    run whose results were all written: every command closes the group on its way out."""
    from sliders.cli import _run

    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        assert _run(lambda argv: 0, []) == 0
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _manual_step(config, entries, ranks: int, path: Path) -> dict:
    """One optimizer step of the single-process loop, written out: each rank's training point drawn
    from its derived seed on its own copy of the model, the gradients averaged by hand. The slider
    is saved to `path` as the trainer saves it; returns its tensors."""
    copies = [prepare_text(config, entries, torch.device("cpu")) for _ in range(ranks)]
    grads = []
    for rank, (parts, objective, _) in enumerate(copies):
        seed = process_seed(config.train.seed, rank)
        terms = objective.step(random.Random(seed), torch.Generator().manual_seed(seed))
        _train_step(parts.unet, parts.network, terms)
        grads.append([p.grad.clone() for p in parts.network.trainable_parameters()])
    network = copies[0][0].network
    network.save(path.with_name(path.stem + "-before.safetensors"), {}, config.save.precision)
    for n, parameter in enumerate(network.trainable_parameters()):
        parameter.grad = sum(g[n] for g in grads) / ranks
    optimizer = make_optimizer(config.train.optimizer, network.trainable_parameters(), config.train.lr,
                               config.train.optimizer_args)
    scheduler = make_lr_scheduler(config.train.lr_scheduler, optimizer, config.train.iterations, config.train.lr)
    optimizer.step()
    scheduler.step()
    network.save(path, {}, config.save.precision)
    return read_slider_file(path)[0]


def test_one_process_trains_the_slider_of_the_single_process_loop(text_config, tmp_path):
    assert train_main(["--config", str(text_config), "--device", "cpu"]) == 0
    config = load_config(text_config)
    entries = load_prompts(config.prompts_file)
    expected = _manual_step(config, entries, 1, tmp_path / "manual.safetensors")
    trained = read_slider_file(_slider(tmp_path))[0]
    assert expected.keys() == trained.keys()
    assert all(torch.equal(expected[k], trained[k]) for k in expected)


# --------------------------------------------------------------------------------------------------
# Two CPU processes under `accelerate launch`
# --------------------------------------------------------------------------------------------------


def test_two_processes_train_the_mean_of_their_two_training_points(text_config, tmp_path):
    result = launch("sliders-train", "--config", str(text_config), "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("saved slider:") == 1  # the main process speaks, once
    config = load_config(text_config)
    entries = load_prompts(config.prompts_file)
    trained = read_slider_file(_slider(tmp_path))[0]
    expected = _manual_step(config, entries, 2, tmp_path / "two.safetensors")
    alone = _manual_step(config, entries, 1, tmp_path / "one.safetensors")
    before = read_slider_file(tmp_path / "two-before.safetensors")[0]
    # The step each weight took, to float rounding (the launched processes run on 1 thread each, this one on more).
    largest = max((expected[k] - before[k]).abs().max().item() for k in expected)
    for key in expected:
        torch.testing.assert_close(trained[key] - before[key], expected[key] - before[key], rtol=1e-3, atol=1e-4 * largest)
    rounding = max((trained[k] - expected[k]).abs().max().item() for k in expected)
    moved = max((alone[k] - expected[k]).abs().max().item() for k in expected)
    assert moved > 100 * rounding  # rank 1's point mattered far beyond the rounding
    import json

    stats = json.loads((_slider(tmp_path).parent / "stats.json").read_text())
    assert stats["processes"] == 2 and stats["iterations"] == 1
    # Both processes' UNet samples are counted: twice what one process counts for the same step.
    assert train_main(["--config", str(text_config), "--device", "cpu", "--name", "one"]) == 0
    one = json.loads((_slider(tmp_path, "one").parent / "stats.json").read_text())
    assert stats["unet_backward_samples"] == 2 * one["unet_backward_samples"]


def test_a_failure_in_one_process_stops_both_with_one_line(text_config, tmp_path):
    """The main process alone finds the run folder taken (it alone holds the run folder): the
    other process, already loading the model, stops at its next meeting point instead of waiting."""
    assert train_main(["--config", str(text_config), "--device", "cpu"]) == 0
    result = launch("sliders-train", "--config", str(text_config), "--device", "cpu")
    # The main process exits 2 (a bad input); accelerate's launcher turns any failed process into 1 (docs/distributed.md).
    assert result.returncode == 1, result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith(("error:", "training stopped:"))]
    assert len(ours) == 1 and "already exists" in ours[0], result.stderr[-3000:]


def test_two_processes_sample_the_images_of_one_bit_for_bit(text_config, tmp_path):
    assert train_main(["--config", str(text_config), "--device", "cpu"]) == 0
    slider = str(_slider(tmp_path))
    common = ["--slider", slider, "--scales=-2,0,2", "--prompt", "circle", "--prompt", "large square",
              "--seeds", "0,1", "--steps", "3", "--resolution", "64", "--device", "cpu"]
    alone = subprocess.run([str(BIN / "sliders-sample"), *common, "--output", str(tmp_path / "one")],
                           env={**os.environ, **ENV}, capture_output=True, text=True, timeout=TIMEOUT)
    assert alone.returncode == 0, alone.stderr[-3000:]
    result = launch("sliders-sample", *common, "--output", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote 12 images") == 1
    one = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    two = sorted(p.name for p in (tmp_path / "two").glob("*.png"))
    assert one == two and len(one) == 2 * 2 * 3 + 1  # every image, and one grid
    for name in one:
        a = np.asarray(Image.open(tmp_path / "one" / name))
        b = np.asarray(Image.open(tmp_path / "two" / name))
        assert np.array_equal(a, b), name


def test_two_processes_evaluate_into_the_report_of_one(text_config, tmp_path):
    assert train_main(["--config", str(text_config), "--device", "cpu"]) == 0
    common = ["--slider", str(_slider(tmp_path)), "--scales=-2,0,2", "--prompt", "circle", "--seeds", "0-2",
              "--steps", "2", "--resolution", "64", "--device", "cpu"]
    one, two = eval_alone_and_split(common, tmp_path)
    assert one == two  # every image's measurements, every figure


def eval_alone_and_split(common, tmp_path):
    """`sliders-eval` with `common` flags in one process and split over two: both reports, less `seconds`."""
    alone = subprocess.run([str(BIN / "sliders-eval"), *common, "--output", str(tmp_path / "one")],
                           env={**os.environ, **ENV}, capture_output=True, text=True, timeout=TIMEOUT)
    assert alone.returncode == 0, alone.stderr[-3000:]
    result = launch("sliders-eval", *common, "--output", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    one.pop("seconds"), two.pop("seconds")
    return one, two
