"""Runs that survive: resume (bit for bit on the CPU), interruption by real signals, one run per folder,
earlier runs kept apart, outputs checked before the work, failed saves kept elsewhere."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sliders import checkpoints, trainer
from sliders.cli import sample_main, train_images_main, train_main
from sliders.network import SliderNetwork, read_slider_file
from sliders.objectives import TextObjective
from sliders.runs import RunLock, check_writable_folder, latest_resume_point
from conftest import cli_config_text
from test_cli import _error_line, image_root  # noqa: F401  (fixture)

RUN = "size_alpha1.0_rank2_noxattn"


def _config(tmp_path, **train):
    config = tmp_path / f"config{len(list(tmp_path.glob('config*.yaml')))}.yaml"
    config.write_text(cli_config_text(tmp_path, **train))
    return config


def _last_line(capsys):
    """The last stderr line (a progress bar may come before it)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def _tensors(path):
    return read_slider_file(path)[0]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class _Stop(BaseException):
    """Stands in for a process killed outright: nothing in the run catches it."""


def _stop_at(monkeypatch, call, action):
    """Run `action` when the objective's step is called for the `call`-th time."""
    original = TextObjective.step
    calls = {"n": 0}

    def step(self, rng, generator):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return original(self, rng, generator)

    monkeypatch.setattr(TextObjective, "step", step)


ITERATIONS = ["--iterations", "4", "--device", "cpu", "--seed", "5"]


@pytest.mark.parametrize("reuse, model", [(1, "builtin:tiny-sdxl"), (3, "builtin:tiny-sdxl"), (3, "builtin:tiny-sd2v")])
def test_killed_run_resumes_to_the_same_slider_tensor_for_tensor(tmp_path, monkeypatch, reuse, model):
    """Killed after the step-2 checkpoint (per_steps 2): --resume continues from step 2 and ends with
    exactly the slider of a run that never stopped, also with queued trajectories (trajectory_reuse 3),
    and on an SD 2.x v-prediction model (no added time ids in the queued points)."""
    config = _config(tmp_path, trajectory_reuse=reuse)
    per2 = tmp_path / "per2.yaml"
    per2.write_text(config.read_text().replace("per_steps: 1", "per_steps: 2").replace("builtin:tiny-sdxl", model))
    common = ["--config", str(per2), *ITERATIONS]
    assert train_main(common + ["--name", "whole"]) == 0
    whole = _tensors(tmp_path / "models" / "whole_alpha1.0_rank2_noxattn" / "whole_last.safetensors")

    def kill():
        raise _Stop()

    with monkeypatch.context() as patch:
        _stop_at(patch, 3, kill)
        with pytest.raises(_Stop):
            train_main(common + ["--name", "size"])
    folder = tmp_path / "models" / RUN
    point = latest_resume_point(folder, "size")
    assert point is not None and point.step == 2
    assert not (folder / "size_last.safetensors").exists()
    assert train_main(common + ["--name", "size", "--resume"]) == 0
    _assert_same(_tensors(folder / "size_last.safetensors"), whole)
    # The step-2 checkpoint is the same as the uninterrupted run's, and the finished run keeps no state.
    _assert_same(_tensors(folder / "size_2steps.safetensors"),
                 _tensors(tmp_path / "models" / "whole_alpha1.0_rank2_noxattn" / "whole_2steps.safetensors"))
    assert not list(folder.glob("*.state.*"))


def test_sigint_saves_a_checkpoint_at_the_current_step_and_resume_matches(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path)
    per = tmp_path / "per3.yaml"
    per.write_text(config.read_text().replace("per_steps: 1", "per_steps: 3"))
    common = ["--config", str(per), *ITERATIONS]
    assert train_main(common + ["--name", "whole"]) == 0
    whole = _tensors(tmp_path / "models" / "whole_alpha1.0_rank2_noxattn" / "whole_last.safetensors")
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _stop_at(patch, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
        assert train_main(common + ["--name", "size"]) == 130
    line = _last_line(capsys)
    folder = tmp_path / "models" / RUN
    assert "size_2steps.safetensors" in line and "step 2 of 4" in line and "--resume" in line
    assert latest_resume_point(folder, "size").step == 2
    assert not (folder / ".lock").exists()
    assert train_main(common + ["--name", "size", "--resume"]) == 0
    _assert_same(_tensors(folder / "size_last.safetensors"), whole)


def test_image_slider_resumes_to_the_same_slider(image_root, tmp_path, monkeypatch):  # noqa: F811
    from sliders.objectives import ImageObjective

    out = tmp_path / "img"
    common = ["--folder_main", str(image_root), "--folders", "low,high", "--scales=-1,1", "--iterations", "4",
              "--resolution", "64", "--device", "cpu", "--output_dir", str(out), "--pretrained_model",
              "builtin:tiny-sdxl", "--seed", "3", "--rank", "2"]
    per = tmp_path / "per.yaml"
    per.write_text("save:\n  per_steps: 2\ntrain:\n  precision: fp32\n  lr_scheduler: cosine\n")
    common += ["--config", str(per)]
    assert train_images_main(common + ["--name", "whole"]) == 0
    original = ImageObjective.step
    calls = {"n": 0}

    def step(self, rng, generator):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Stop()
        return original(self, rng, generator)

    monkeypatch.setattr(ImageObjective, "step", step)
    with pytest.raises(_Stop):
        train_images_main(common + ["--name", "part"])
    monkeypatch.setattr(ImageObjective, "step", original)
    assert train_images_main(common + ["--name", "part", "--resume"]) == 0
    _assert_same(_tensors(out / "part_alpha1.0_rank2_noxattn" / "part_last.safetensors"),
                 _tensors(out / "whole_alpha1.0_rank2_noxattn" / "whole_last.safetensors"))


def test_resume_refuses_what_cannot_be_resumed(tmp_path, capsys):
    config = _config(tmp_path)
    common = ["--config", str(config), "--device", "cpu"]
    assert train_main(common + ["--resume"]) == 2
    assert "no resumable checkpoint" in _error_line(capsys)
    assert train_main(common) == 0
    capsys.readouterr()
    assert train_main(common + ["--resume"]) == 2
    assert "already finished" in _error_line(capsys)
    assert train_main(common + ["--resume", "--overwrite"]) == 2
    assert "contradict" in _error_line(capsys)


def test_resume_with_another_config_names_the_differences(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path)
    common = ["--config", str(config), *ITERATIONS]
    with monkeypatch.context() as patch:
        _stop_at(patch, 2, lambda: (_ for _ in ()).throw(_Stop()))
        with pytest.raises(_Stop):
            train_main(common)
    capsys.readouterr()
    assert train_main(common + ["--resume", "--seed", "6"]) == 2
    assert "train.seed (5 then, 6 now)" in _error_line(capsys)
    assert train_main(common + ["--resume", "--attributes", "red"]) == 2
    assert "prompts" in _error_line(capsys)


def _console(name):
    return str(Path(sys.executable).parent / name)


def _wait_for(path, process, seconds=900):
    """Wait while `process` runs until a file matches `path` (its name may be a glob pattern). The
    deadline only stops a hung test: a loaded machine may take minutes to get there."""
    deadline = time.monotonic() + seconds
    while not any(path.parent.glob(path.name)):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_real_signal_to_a_real_training_process_keeps_a_resumable_checkpoint(tmp_path, signum, code):
    config = _config(tmp_path)
    env = {**os.environ, "PYTHONPATH": ""}
    process = subprocess.Popen([_console("sliders-train"), "--config", str(config), "--iterations", "100000",
                                "--device", "cpu"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "models" / RUN
    try:
        # Any step's state: only the latest is kept, so step 1's lasts one step, which a poller on a
        # loaded machine can miss; some state exists from the first checkpoint on.
        _wait_for(folder / "size_*steps.state.json", process)
        assert json.loads((folder / ".lock").read_text())["pid"] == process.pid
        process.send_signal(signum)
        _, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, err[-2000:]
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("interrupted: saved the resumable checkpoint") and "--resume" in last_line
    point = latest_resume_point(folder, "size")
    assert point is not None and point.step >= 1 and str(point.checkpoint) in last_line
    assert not (folder / ".lock").exists() and not list(folder.glob(".*.tmp"))


BLOCKING_DRIVER = """
import sys, time
from pathlib import Path
from sliders.models import injected_loader, load_pipeline
from sliders.objectives import TextObjective
from sliders.cli import train_main

phase, marker = sys.argv[1], Path(sys.argv[2])


def block(original):
    def blocked(*args, **kwargs):
        marker.write_text(phase)
        time.sleep(100_000)  # a long set-up, or a first step that does not end: only a signal gets out
        return original(*args, **kwargs)
    return blocked


if phase == "setup":
    loading = injected_loader(block(load_pipeline))
else:
    TextObjective.step = block(TextObjective.step)
    loading = injected_loader(None)
with loading:
    sys.exit(train_main(sys.argv[3:]))
"""


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("phase, signum, code, earlier", [
    ("setup", signal.SIGTERM, 143, False),
    ("first_step", signal.SIGINT, 130, True),
    ("first_step", signal.SIGTERM, 143, False),
])
def test_a_signal_before_the_first_step_ends_the_run_at_once_and_leaves_nothing(tmp_path, phase, signum, code,
                                                                                 earlier):
    """A signal while the model loads, or during a first step that does not end, ends the run at once
    with its exit code: no lock, no run folder, config.yaml or stats.json, no temporary file; a folder
    that was there before (here: an earlier run that --overwrite was moving aside) keeps its contents."""
    config = _config(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(BLOCKING_DRIVER)
    marker = tmp_path / "blocked"
    folder = tmp_path / "models" / RUN
    before = {}
    if earlier:
        folder.mkdir(parents=True)
        (folder / "size_last.safetensors").write_bytes(b"an earlier run's slider")
        (folder / "config.yaml").write_text("earlier: config\n")
        (folder / "notes.txt").write_text("mine")
        before = _snapshot(tmp_path / "models")
    process = subprocess.Popen([sys.executable, str(driver), phase, str(marker), "--config", str(config),
                                "--device", "cpu", "--iterations", "3", *(["--overwrite"] if earlier else [])],
                               cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(marker, process)
        process.send_signal(signum)
        # The blocked call sleeps far longer than this timeout: a process that ends at all ended on the
        # signal, however slow the machine is (no duration is asserted).
        _, err = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, err[-2000:]
    assert err.strip().splitlines()[-1] == ("terminated" if code == 143 else "interrupted")
    if earlier:
        assert _snapshot(tmp_path / "models") == before
    else:
        assert not (tmp_path / "models").exists(), _snapshot(tmp_path / "models")


def test_an_abandoned_run_folder_keeps_what_was_saved(tmp_path):
    """`RunFolder.abandon` (a run stopped by a second signal, say) undoes nothing once the run saved a
    slider: the checkpoint and the records stay; only the lock goes."""
    from sliders.runs import prepare_run_folder

    folder = tmp_path / "models" / "run"
    run = prepare_run_folder(folder, "size", {}, "[]", overwrite=False, resume=False)
    (folder / "config.yaml").write_text("this run\n")
    (folder / "size_1steps.safetensors").write_bytes(b"a checkpoint")
    run.abandon()
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "size_1steps.safetensors"]
    run = prepare_run_folder(folder, "other", {}, "[]", overwrite=False, resume=False)
    (folder / "config.yaml").write_text("the other run\n")
    (folder / "stats.json").write_text("{}")
    run.abandon()
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "size_1steps.safetensors"]
    assert (folder / "config.yaml").read_text() == "this run\n"


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    config = _config(tmp_path)
    folder = tmp_path / "models" / RUN
    folder.mkdir(parents=True)
    # Alive until killed below, however long the run takes to reach the lock on a loaded machine.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        (folder / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                  "started": "then", "command": "sliders-train --config x"}))
        assert train_main(["--config", str(config), "--device", "cpu"]) == 2
        line = _error_line(capsys)
        assert f"in use by process {sleeper.pid}" in line and "sliders-train --config x" in line
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]
    finally:
        sleeper.kill()
        sleeper.wait()
    # The holder is gone: its lock is stale and taken over; leftover temporary files are removed.
    (folder / ".size_last.abc123.tmp").write_bytes(b"x" * 100)
    assert train_main(["--config", str(config), "--device", "cpu", "--iterations", "1"]) == 0
    assert not (folder / ".lock").exists() and not list(folder.glob(".*.tmp"))


def test_lock_is_exclusive_within_one_process(tmp_path):
    with RunLock(tmp_path / "run") as first:
        assert first.held and (tmp_path / "run" / ".lock").is_file()
    assert not (tmp_path / "run" / ".lock").exists()


def test_earlier_checkpoints_are_refused_without_overwrite_and_moved_aside_with_it(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path)
    common = ["--config", str(config), *ITERATIONS]
    with monkeypatch.context() as patch:  # a killed run: step checkpoints, no _last
        _stop_at(patch, 3, lambda: (_ for _ in ()).throw(_Stop()))
        with pytest.raises(_Stop):
            train_main(common)
    folder = tmp_path / "models" / RUN
    before = {p.name: p.read_bytes() for p in folder.glob("size_*steps.safetensors")}
    assert sorted(before) == ["size_1steps.safetensors", "size_2steps.safetensors"]
    capsys.readouterr()
    assert train_main(common) == 2
    line = _error_line(capsys)
    assert "already exists" in line and "--resume" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in folder.glob("size_*steps.safetensors")} == before
    assert train_main(common + ["--overwrite", "--iterations", "1"]) == 0
    (replaced,) = folder.glob("replaced-*")
    assert {p.name: p.read_bytes() for p in replaced.glob("size_*steps.safetensors")} == before
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["config.yaml", "size_last.safetensors", "stats.json"]


def test_output_folder_checks_before_any_model_loads(tmp_path, capsys, inject_loader):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    inject_loader(no_model)
    config = _config(tmp_path)
    occupied = tmp_path / "occupied"
    occupied.write_text("keep me")
    assert train_main(["--config", str(config), "--device", "cpu", "--output_dir", str(occupied / "deeper")]) == 2
    assert "is a file" in _error_line(capsys)
    assert train_main(["--config", str(config), "--device", "cpu", "--output_dir", str(tmp_path / ("x" * 300))]) == 2
    assert "too long" in _error_line(capsys)
    if os.geteuid() != 0:
        locked = tmp_path / "readonly"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            assert train_main(["--config", str(config), "--device", "cpu", "--output_dir", str(locked)]) == 2
            assert "not writable" in _error_line(capsys)
        finally:
            locked.chmod(stat.S_IRWXU)


def test_writable_check_leaves_nothing_behind(tmp_path):
    check_writable_folder(tmp_path / "a" / "b", "output", "fix")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_final_save_keeps_the_slider_elsewhere_and_says_where(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path)
    original = SliderNetwork.save
    monkeypatch.setattr(checkpoints.tempfile, "gettempdir", lambda: str(tmp_path / "fallback"))
    (tmp_path / "fallback").mkdir()

    def save(self, path, *args, **kwargs):
        if Path(path).name.endswith("_last.safetensors"):
            raise OSError(28, "No space left on device")
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(SliderNetwork, "save", save)
    assert train_main(["--config", str(config), "--device", "cpu"]) == 1
    line = _last_line(capsys)
    (kept,) = (tmp_path / "fallback").glob("size_last-*.safetensors")
    assert "No space left on device" in line and str(kept) in line
    assert read_slider_file(kept)[0]


FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.mark.parametrize("which", ["_last", "_1steps"])
def test_safetensors_own_full_disk_error_keeps_the_slider_elsewhere(tmp_path, monkeypatch, capsys, which):
    """safetensors reports a full disk as its SafetensorError (not an OSError): the final slider and a
    step checkpoint still go to the fallback folder, and the one line says where (exit 1)."""
    import sliders.slider_files
    from safetensors import SafetensorError

    config = _config(tmp_path)
    fallback = tmp_path / "fallback"
    fallback.mkdir()
    monkeypatch.setattr(checkpoints.tempfile, "gettempdir", lambda: str(fallback))
    original = sliders.slider_files.save_file

    def save_file(tensors, filename, metadata=None):
        if Path(filename).name.startswith(f".size{which}."):  # the temporary file of that slider
            raise SafetensorError(FULL_DISK)
        return original(tensors, filename, metadata=metadata)

    monkeypatch.setattr(sliders.slider_files, "save_file", save_file)
    assert train_main(["--config", str(config), "--device", "cpu"]) == 1
    line = _last_line(capsys)
    (kept,) = fallback.glob(f"size{which}-*.safetensors")
    assert "No space left on device" in line and str(kept) in line
    assert read_slider_file(kept)[0]
    folder = tmp_path / "models" / RUN
    assert not (folder / f"size{which}.safetensors").exists() and not list(folder.glob(".*.tmp"))
    assert not (folder / ".lock").exists()


def test_a_safetensors_error_that_is_not_a_failed_write_is_not_taken_for_one(tmp_path):
    from safetensors import SafetensorError

    from sliders.files import atomic_tensor_path

    with pytest.raises(OSError) as failed:
        with atomic_tensor_path(tmp_path / "a.safetensors"):
            raise SafetensorError(FULL_DISK)
    assert failed.value.errno == 28 and failed.value.strerror == os.strerror(28)
    with pytest.raises(SafetensorError, match="header too large"):
        with atomic_tensor_path(tmp_path / "b.safetensors"):
            raise SafetensorError("Error while deserializing header: header too large")
    assert list(tmp_path.iterdir()) == []


def _can_mount_a_small_disk(folder) -> bool:
    """Whether `unshare` gives this user a mount namespace where a tmpfs can be mounted (Linux)."""
    folder.mkdir(exist_ok=True)
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m none '{folder}'"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


FULL_DISK_DRIVER = """
import os, sys
from pathlib import Path
from sliders import checkpoints
from sliders.cli import train_main

original = checkpoints.Checkpoints.save_last


def fill_the_disk_then_save(self, step):
    # The disk fills up during training: nothing more fits when the final slider is written.
    handle = os.open(self.folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    for size in (1 << 20, 4096, 1):
        try:
            while True:
                os.write(handle, b"x" * size)
        except OSError:
            pass
    os.close(handle)
    return original(self, step)


checkpoints.Checkpoints.save_last = fill_the_disk_then_save
sys.exit(train_main(sys.argv[1:]))
"""


def test_a_really_full_disk_keeps_the_final_slider_and_says_where(tmp_path):
    """The run folder on a small file system (a tmpfs in a private mount namespace) that fills up:
    the real ENOSPC, through safetensors' own writer, ends the run with exit 1 and one line naming
    the slider kept in the temporary folder, which loads."""
    disk = tmp_path / "disk"
    if not _can_mount_a_small_disk(disk):
        pytest.skip("no mount namespace here (unshare -rm) to make a small disk in")
    config = tmp_path / "full.yaml"
    config.write_text(cli_config_text(tmp_path).replace(str(tmp_path / "models"), str(disk / "models")))
    driver = tmp_path / "driver.py"
    driver.write_text(FULL_DISK_DRIVER)
    fallback = tmp_path / "fallback"
    fallback.mkdir()
    env = {**os.environ, "TMPDIR": str(fallback), "HF_HUB_OFFLINE": "1"}
    command = (f"mount -t tmpfs -o size=8m none '{disk}' && exec '{sys.executable}' '{driver}' "
               f"--config '{config}' --device cpu")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    (kept,) = fallback.glob("size_last-*.safetensors")
    assert line.startswith("training stopped: could not write the final slider")
    assert "No space left on device" in line and str(kept) in line
    tensors, metadata = read_slider_file(kept)[:2]
    assert tensors and metadata["sliders_step"] == "2"


def test_nan_loss_keeps_the_last_good_weights_and_names_them(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path)
    per = tmp_path / "per.yaml"
    per.write_text(config.read_text().replace("per_steps: 1", "per_steps: 100"))
    original = trainer._train_step
    calls = {"n": 0}

    def step(unet, network, terms, *family):
        calls["n"] += 1
        loss = original(unet, network, terms, *family)
        return float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer, "_train_step", step)
    assert train_main(["--config", str(per), *ITERATIONS]) == 1
    line = _last_line(capsys)
    folder = tmp_path / "models" / RUN
    assert "loss is nan at step 3" in line and str(folder / "size_2steps.safetensors") in line
    assert not (folder / "size_last.safetensors").exists()
    assert all(torch.isfinite(t).all() for t in _tensors(folder / "size_2steps.safetensors").values())


def test_sliders_checkpoints_and_states_get_the_usual_permissions(tmp_path, monkeypatch):
    config = _config(tmp_path)
    with monkeypatch.context() as patch:
        _stop_at(patch, 2, lambda: (_ for _ in ()).throw(_Stop()))
        with pytest.raises(_Stop):
            train_main(["--config", str(config), *ITERATIONS])
    folder = tmp_path / "models" / RUN
    mask = os.umask(0)
    os.umask(mask)
    for path in [*folder.glob("*.state.*"), folder / "config.yaml"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_ctrl_c_during_sampling_keeps_the_images_made_and_their_grid(tmp_path, monkeypatch, capsys):
    import sliders.outputs as outputs

    config = _config(tmp_path)
    assert train_main(["--config", str(config), "--device", "cpu", "--iterations", "1"]) == 0
    slider = tmp_path / "models" / RUN / "size_last.safetensors"
    original = outputs.write_png
    written = []

    def write_png(image, path):
        result = original(image, path)
        written.append(Path(path).name)
        if len(written) == 2 and Path(path).name != outputs.GRID_NAME:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(outputs, "write_png", write_png)
    out = tmp_path / "samples"
    capsys.readouterr()
    code = sample_main(["--slider", str(slider), "--scales", "-2,0,2", "--prompt", "circle", "--steps", "2",
                        "--output", str(out), "--device", "cpu"])
    assert code == 130
    line = _error_line(capsys)
    assert "kept 2 images" in line and str(out / "grid.png") in line
    assert len(list(out.glob("p0_*.png"))) == 2 and (out / "grid.png").is_file()


# --------------------------------------------------------------------------------------------------
# Bad inputs: one line, exit 2, nothing written, no model loaded
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def no_model(inject_loader):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a bad input")

    inject_loader(refuse)


TRAIN_BAD = [
    ({"prompts": ("resolution: 64", "resolution: 100000")}, [], "from 64 to 4096"),
    ({"prompts": ("batch_size: 2", "batch_size: 100000")}, [], "at most 64"),
    ({}, ["--seed", str(2**64)], "train.seed"),
    ({}, ["--seed", "-1"], "train.seed"),
    ({"config": ("lr: 0.001", "lr: 1e39")}, [], "train.lr' must be at most 1"),
    ({"config": ("lr: 0.001", "lr: .nan")}, [], "train.lr"),
    ({"config": ('name_or_path: "builtin:tiny-sdxl"', 'name_or_path: "builtin:tiny-sdxl"\n  clip_skip: 100')}, [],
     "clip_skip' must be from 0 to 10"),
    ({"config": ("max_denoising_steps: 6", "max_denoising_steps: 5000")}, [], "at most 1000"),
    ({}, ["--rank", "100000"], "network.rank' must be at most 1024"),
    ({}, ["--name", "x" * 300], "300 characters long"),
    ({}, ["--name", "a:b"], "file names"),
    ({}, ["--name", ".hidden"], "leading dot"),
    ({}, ["--name", "tab\there"], "file names"),
    ({}, ["--device", "meta"], "not a device sliders runs on"),
    ({}, ["--device", "cpu:3"], "one CPU device"),
    ({}, ["--device", "cuda:-1"], "not a device"),
    ({}, ["--device", "mps"], "MPS"),
    ({"config": ('optimizer: "AdamW"', 'optimizer: "AdamW"\n  optimizer_args: "betas=2,3"')}, [], "do not fit"),
    ({"config": ('optimizer: "AdamW"', 'optimizer: "AdamW"\n  optimizer_args: "weight_decay=abc"')}, [], "optimizer"),
    ({"config": ('optimizer: "AdamW"', 'optimizer: "AdamW"\n  optimizer_args: "nesterov=1"')}, [], "nesterov"),
    ({"config": ('optimizer: "AdamW"', 'optimizer: "AdamW"\n  optimizer_args: "lr=1"')}, [], "lr"),
    ({"append": "logging:\n  use_wandb: true\n"}, [], "needs the package 'wandb'"),
    ({"config": ("train:\n", "train:\n  seed: 1\ntrain:\n")}, [], "'train' twice"),
    ({}, ["--resume", "--overwrite"], "contradict"),
    ({}, ["--trajectory_reuse", "1000000000"], "train.trajectory_reuse' must be at most 2, got 1000000000"),
    ({}, ["--xk_max_steps", "7"], "train.xk_max_steps' must be at most 6"),
    ({}, ["--iterations", "1000000000"], "train.iterations' must be at most 1000000"),
]


@pytest.mark.parametrize("edits, args, message", TRAIN_BAD)
def test_train_bad_values_are_refused_before_any_model_loads(edits, args, message, tmp_path, capsys, no_model):
    import torch.backends.mps

    if "--device" in args and args[-1] == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    config = _config(tmp_path)
    if "append" in edits:
        config.write_text(config.read_text() + edits.pop("append"))
    for which, (old, new) in edits.items():
        path = tmp_path / "prompts.yaml" if which == "prompts" else config
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))
    assert train_main(["--config", str(config), "--device", "cpu", *args]) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "models").exists()


def test_a_missing_tensorboard_is_named_before_any_model_loads(tmp_path, capsys, monkeypatch, no_model):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = _config(tmp_path)
    config.write_text(config.read_text() + f"logging:\n  tensorboard_dir: {tmp_path / 'tb'}\n")
    assert train_main(["--config", str(config), "--device", "cpu"]) == 2
    line = _error_line(capsys)
    assert "logging.tensorboard_dir needs the package 'tensorboard'" in line and "optimizer" not in line


def _slider(tmp_path, unet, name="s", poison=None):
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1)
    if poison is not None:
        with torch.no_grad():
            next(iter(network.loras.values())).lora_up.weight[0, 0] = poison
    return network.save(tmp_path / f"{name}.safetensors", {"sliders_base_model": "builtin:tiny-sdxl",
                                                            "sliders_resolution": "64"})


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_nan_or_infinite_slider_is_refused_with_its_layer_named(tmp_path, unet, capsys, no_model, poison):
    slider = _slider(tmp_path, unet, poison=poison)
    out = tmp_path / "out"
    assert sample_main(["--slider", str(slider), "--prompt", "x", "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert "NaN or infinite up weights in layer 'lora_unet_" in line and not out.exists()
    from sliders.cli import eval_main

    assert eval_main(["--slider", str(slider), "--prompt", "x", "--output", str(out)]) == 2
    assert "NaN or infinite" in _error_line(capsys) and not out.exists()


def test_a_slider_with_wrong_keys_is_refused_before_any_model_loads(tmp_path, capsys, no_model):
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"model.layer.weight": torch.zeros(2, 2)}, str(path))
    assert sample_main(["--slider", str(path), "--prompt", "x", "--output", str(tmp_path / "o")]) == 2
    assert "model.layer.weight" in _error_line(capsys) and not (tmp_path / "o").exists()


SAMPLE_BAD = [
    (["--scales", "1e30"], "from -100 to 100"),
    (["--scales", "-1000,0"], "from -100 to 100"),
    (["--steps", "5000"], "from 1 to 1000"),
    (["--resolution", "100000"], "larger than 4096"),
    (["--seeds", str(2**64)], "out of range"),
    (["--device", "mps"], "MPS"),
    (["--device", "cuda:99"], "cuda"),
    (["--output", "{file}/inside"], "is a file"),
    (["--output", "{long}"], "too long"),
]


@pytest.mark.parametrize("args, message", SAMPLE_BAD)
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_sample_and_eval_bad_values_are_refused_before_any_model_loads(command, args, message, tmp_path, unet, capsys,
                                                                        no_model):
    import torch.backends.mps

    from sliders.cli import eval_main

    if args == ["--device", "mps"] and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    slider = _slider(tmp_path, unet)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    values = {"file": blocker, "long": tmp_path / ("y" * 300)}
    main = sample_main if command == "sample" else eval_main
    argv = ["--slider", str(slider), "--prompt", "x", "--device", "cpu", "--output", str(tmp_path / "out")]
    assert main(argv + [a.format(**values) for a in args]) == 2
    assert message in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "s.safetensors"]


def test_sampling_output_folders_are_owned_by_one_run_and_cleaned_of_leftovers(tmp_path, capsys):
    """sliders-sample and sliders-eval hold a lock on their output folder while they write, refuse a
    second run there naming the first, and remove the temporary files a killed run left."""
    import json as _json
    import os as _os
    import socket

    from sliders.cli import sample_main
    from sliders.sampling import owned_output

    out = tmp_path / "samples"
    out.mkdir()
    (out / ".grid.abc123.tmp").write_bytes(b"half a PNG")
    with owned_output(out, True):
        assert (out / ".lock").is_file() and not (out / ".grid.abc123.tmp").exists()
    assert not (out / ".lock").exists()
    # A folder in use by another live process (here: our parent) is refused before any model loads.
    (out / ".lock").write_text(_json.dumps({"pid": _os.getppid(), "host": socket.gethostname(),
                                            "started": "now", "command": "sliders-sample ..."}))
    slider = tmp_path / "s.safetensors"
    from safetensors.torch import save_file
    import torch as _torch
    # A layer of the tiny UNet (64 channels in its mid block), so that the slider fits the base model.
    save_file({"lora_unet_mid_block_resnets_0_conv1.lora_down.weight": _torch.zeros(1, 64, 3, 3),
               "lora_unet_mid_block_resnets_0_conv1.lora_up.weight": _torch.zeros(64, 1, 1, 1)}, str(slider))
    code = sample_main(["--slider", str(slider), "--prompt", "x", "--output", str(out), "--pretrained_model",
                        "builtin:tiny-sdxl", "--device", "cpu", "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"in use by process {_os.getppid()}" in err[0] and "--output" in err[0]
