"""End to end: every command and both official-flag shims on the tiny model; every bad input's error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sliders.cli import eval_main, sample_main, train_images_main, train_main
from sliders.network import read_slider_file

from conftest import cli_config_text

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def text_config(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(cli_config_text(tmp_path))
    return config


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "pairs"
    rng = np.random.default_rng(0)
    for folder in ("low", "high", "higher"):
        (root / folder).mkdir(parents=True)
        for stem in ("x", "y"):
            Image.fromarray(rng.integers(0, 255, (80, 64, 3), dtype=np.uint8)).save(root / folder / f"{stem}.png")
    return root


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_train_writes_checkpoints_config_and_metadata(text_config, tmp_path, capsys):
    assert train_main(["--config", str(text_config), "--attributes", "red, blue", "--device", "cpu", "--seed", "3"]) == 0
    folder = tmp_path / "models" / "size_alpha1.0_rank2_noxattn"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "size_1steps.safetensors", "size_last.safetensors",
                                                        "stats.json"]
    assert "saved slider" in capsys.readouterr().out
    tensors, metadata = read_slider_file(folder / "size_last.safetensors")
    assert metadata["ss_network_dim"] == "2" and metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["sliders_base_model"] == "builtin:tiny-sdxl" and metadata["sliders_resolution"] == "64"
    assert "red large circle" in metadata["sliders_prompts"]
    # Training moved the slider away from zero (a fresh slider has every up weight at 0).
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if k.endswith("lora_up.weight"))


def test_flags_override_yaml_and_official_config_file_alias(text_config, tmp_path):
    out = tmp_path / "other"
    code = train_main(["--config_file", str(text_config), "--name", "renamed", "--rank", "3", "--alpha", "2",
                       "--iterations", "1", "--output_dir", str(out), "--device", "cpu"])
    assert code == 0
    _, metadata = read_slider_file(out / "renamed_alpha2.0_rank3_noxattn" / "renamed_last.safetensors")
    assert metadata["ss_network_dim"] == "3" and metadata["ss_network_alpha"] == "2.0"


def test_training_is_reproducible_from_the_seed(text_config, tmp_path):
    results = []
    for name in ("a", "b"):
        assert train_main(["--config", str(text_config), "--name", name, "--seed", "7", "--device", "cpu"]) == 0
        tensors, _ = read_slider_file(tmp_path / "models" / f"{name}_alpha1.0_rank2_noxattn" / f"{name}_last.safetensors")
        results.append(tensors)
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_fused_denoising_flag_trains_nearly_the_same_slider_and_is_recorded(text_config, tmp_path):
    results, configs = [], []
    for name, flag in (("hooked", "--no-fused_denoising"), ("fused", "--fused_denoising")):
        assert train_main(["--config", str(text_config), "--name", name, "--seed", "7", "--device", "cpu", flag]) == 0
        folder = tmp_path / "models" / f"{name}_alpha1.0_rank2_noxattn"
        results.append(read_slider_file(folder / f"{name}_last.safetensors")[0])
        configs.append(yaml.safe_load((folder / "config.yaml").read_text())["train"]["fused_denoising"])
    assert configs == [False, True]
    hooked, fused = results
    assert any(t.abs().sum() > 0 for k, t in fused.items() if k.endswith("lora_up.weight"))
    for key in hooked:  # same training up to float rounding in the starting latents
        torch.testing.assert_close(fused[key], hooked[key], rtol=1e-3, atol=1e-5)


def test_existing_run_is_not_overwritten_without_the_flag(text_config, tmp_path, capsys):
    assert train_main(["--config", str(text_config), "--iterations", "1", "--device", "cpu"]) == 0
    last = tmp_path / "models" / "size_alpha1.0_rank2_noxattn" / "size_last.safetensors"
    before = last.read_bytes()
    capsys.readouterr()
    assert train_main(["--config", str(text_config), "--iterations", "1", "--device", "cpu"]) == 2
    assert "already exists" in _error_line(capsys) and last.read_bytes() == before


def test_output_dir_that_is_a_file_is_one_clear_error(text_config, tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.write_text("keep me", encoding="utf-8")
    argv = ["--config", str(text_config), "--iterations", "1", "--device", "cpu", "--output_dir", str(occupied)]
    assert train_main(argv) == 2
    assert "is a file" in _error_line(capsys) and occupied.read_text() == "keep me"


def test_train_images_symmetric_and_multiscale(image_root, tmp_path):
    out = tmp_path / "img"
    common = ["--folder_main", str(image_root), "--iterations", "2", "--resolution", "64", "--device", "cpu",
              "--output_dir", str(out), "--pretrained_model", "builtin:tiny-sdxl"]
    assert train_images_main(common + ["--folders", "low,high", "--scales", "-1, 1", "--name", "sym"]) == 0
    assert train_images_main(common + ["--folders", "low,high,higher", "--scales", "0.67,1,1.3", "--name", "multi"]) == 0
    for name in ("sym", "multi"):
        folder = out / f"{name}_alpha1.0_rank4_noxattn"
        assert (folder / f"{name}_last.safetensors").is_file() and (folder / "config.yaml").is_file()
    _, metadata = read_slider_file(out / "multi_alpha1.0_rank4_noxattn" / "multi_last.safetensors")
    assert '"scales": [0.67, 1.0, 1.3]' in metadata["sliders_prompts"]
    assert '"captions": false' in metadata["sliders_prompts"]


def test_image_sliders_say_that_fused_denoising_does_not_apply(image_root, tmp_path, caplog):
    config = tmp_path / "image.yaml"
    config.write_text("train:\n  fused_denoising: true\n  precision: fp32\n")
    argv = ["--config", str(config), "--folder_main", str(image_root), "--folders", "low,high", "--scales=-1,1",
            "--iterations", "1", "--resolution", "64", "--device", "cpu", "--output_dir", str(tmp_path / "out"),
            "--pretrained_model", "builtin:tiny-sdxl", "--name", "img"]
    with caplog.at_level("WARNING", logger="sliders.trainer"):
        assert train_images_main(argv) == 0
    assert any("fused_denoising has no effect on image sliders" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "out" / "img_alpha1.0_rank4_noxattn" / "img_last.safetensors").is_file()


def test_train_images_with_captions(image_root, tmp_path, capsys):
    argv = ["--folder_main", str(image_root), "--folders", "low,high", "--scales=-1,1", "--iterations", "1",
            "--resolution", "64", "--device", "cpu", "--output_dir", str(tmp_path / "out"),
            "--pretrained_model", "builtin:tiny-sdxl", "--name", "cap", "--captions"]
    assert train_images_main(argv) == 2  # no caption files yet: one line naming the first missing one
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".txt' for image name" in err and not (tmp_path / "out").exists()
    stems = sorted({p.stem for p in (image_root / "low").iterdir()})
    for stem in stems:
        (image_root / f"{stem}.txt").write_text(f"picture {stem}", encoding="utf-8")
    assert train_images_main(argv) == 0
    folder = tmp_path / "out" / "cap_alpha1.0_rank4_noxattn"
    _, metadata = read_slider_file(folder / "cap_last.safetensors")
    assert '"captions": true' in metadata["sliders_prompts"]
    assert "captions: true" in (folder / "config.yaml").read_text()


def test_sample_after_train(text_config, tmp_path, capsys, caplog):
    assert train_main(["--config", str(text_config), "--device", "cpu"]) == 0
    slider = tmp_path / "models" / "size_alpha1.0_rank2_noxattn" / "size_last.safetensors"
    out = tmp_path / "samples"
    capsys.readouterr()
    with caplog.at_level("INFO"):
        code = sample_main(["--slider", str(slider), "--scales", "-2,0,2", "--prompt", "circle", "--seeds", "0,1",
                            "--steps", "3", "--output", str(out), "--device", "cpu"])
    assert code == 0
    said = capsys.readouterr().out + caplog.text
    assert said.count("wrote 6 images") == 1, said  # each message once
    assert len(list(out.glob("p0_*.png"))) == 6 and (out / "grid.png").is_file()
    report = tmp_path / "eval"
    code = eval_main(["--slider", str(slider), "--scales=-1,0,1", "--prompt", "circle", "--seeds", "0-1",
                      "--steps", "2", "--baseline_replace", "circle=large circle", "--output", str(report),
                      "--device", "cpu"])
    assert code == 0
    assert sorted(p.name for p in report.iterdir()) == ["plot.png", "report.json", "report.md"]
    # --fused: the same report up to float rounding, and the report says how its images were made.
    fused = tmp_path / "eval_fused"
    code = eval_main(["--slider", str(slider), "--scales=-1,0,1", "--prompt", "circle", "--seeds", "0-1",
                      "--steps", "2", "--baseline_replace", "circle=large circle", "--output", str(fused),
                      "--device", "cpu", "--fused"])
    assert code == 0
    plain_report, fused_report = (json.loads((f / "report.json").read_text()) for f in (report, fused))
    assert fused_report["settings"]["fused"] is True and plain_report["settings"]["fused"] is False
    assert "fused into the weights" in (fused / "report.md").read_text()
    for a, b in zip(plain_report["rows"], fused_report["rows"]):
        assert a["multipliers"] == b["multipliers"] and a["values"]["colour"] == b["values"]["colour"]
        assert abs(a["values"]["size"] - b["values"]["size"]) < 0.05
    assert sample_main(["--slider", str(slider), "--scales", "2", "--prompt", "circle", "--steps", "2",
                        "--output", str(tmp_path / "fused_samples"), "--device", "cpu", "--fused"]) == 0
    capsys.readouterr()
    assert eval_main(["--slider", str(slider), "--prompt", "circle", "--target", "colour"]) == 2
    assert "colour" in _error_line(capsys)
    # The baseline's edited prompts from a file, line for line; a count mismatch is one clear line.
    edited = tmp_path / "edited.txt"
    edited.write_text("# edited\nlarge circle\n", encoding="utf-8")
    report_file = tmp_path / "eval_file"
    code = eval_main(["--slider", str(slider), "--scales=0,1", "--prompt", "circle", "--seeds", "0", "--steps", "2",
                      "--baseline_prompts_file", str(edited), "--output", str(report_file), "--device", "cpu"])
    assert code == 0
    assert json.loads((report_file / "report.json").read_text())["baseline"]["prompts"] == ["large circle"]
    capsys.readouterr()
    assert eval_main(["--slider", str(slider), "--prompt", "circle", "--prompt", "square",
                      "--baseline_prompts_file", str(edited), "--output", str(tmp_path / "e3")]) == 2
    assert "1 baseline prompts for 2 prompts" in _error_line(capsys) and not (tmp_path / "e3").exists()
    assert eval_main(["--slider", str(slider), "--prompt", "circle", "--baseline_prompts_file", str(edited),
                      "--baseline_replace", "circle=large circle", "--output", str(tmp_path / "e4")]) == 2
    assert "use one way" in _error_line(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "{config}", "--rank", "zero"], "argument --rank: invalid int value"),
        (["--config", "{missing}"], "does not exist"),
        (["--config", "{config}", "--device", "cuda:7"], "no CUDA GPU" if not torch.cuda.is_available() else "device"),
        (["--config", "{bad_key}"], "unknown config key 'train.learning_rate': did you mean"),
        (["--config", "{config}", "--prompts_file", "{bad_prompts}"], "unknown key 'guidance': did you mean 'guidance_scale'"),
        (["--config", "{config}", "--iterations", "0"], "train.iterations' must be > 0"),
        (["--config", "{config}", "--no_such_flag"], "unrecognized arguments"),
        (["--config", "{config}", "--quantize", "8bit"], "'pretrained_model.quantize' is for FLUX.1"),
        (["--config", "{config}", "--quantize", "3bit"], "argument --quantize: invalid choice"),
        (["--config", "{config}", "--transformer", "{missing}"], "'pretrained_model.transformer' is for FLUX.1"),
    ],
)
def test_train_bad_inputs_exit_2_with_one_line(args, message, text_config, tmp_path, capsys):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("train:\n  learning_rate: 1\n")
    bad_prompts = tmp_path / "bad_prompts.yaml"
    bad_prompts.write_text("- target: x\n  guidance: 4\n")
    values = {"config": text_config, "missing": tmp_path / "nope.yaml", "bad_key": bad_key, "bad_prompts": bad_prompts}
    assert _exit_code(train_main, [a.format(**values) for a in args]) == 2
    line = _error_line(capsys)
    assert message in line
    assert not (tmp_path / "models").exists()  # nothing was written


@pytest.mark.parametrize("key, value", [("train.pair_difference", 2.0), ("data.timestep_range", [200, 999])])
def test_image_slider_options_in_a_text_config_are_one_line(key, value, text_config, tmp_path, capsys):
    config = yaml.safe_load(Path(text_config).read_text())
    section, name = key.split(".")
    config.setdefault(section, {})[name] = value
    path = tmp_path / "text-with-image-option.yaml"
    path.write_text(yaml.safe_dump(config))
    assert _exit_code(train_main, ["--config", str(path)]) == 2
    line = _error_line(capsys)
    assert key in line and "image sliders" in line


def _exit_code(main, argv):
    """The exit code, whether the command returned it or argparse exited with it."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


@pytest.mark.parametrize(
    "args, message",
    [
        (["--folders", "low,high", "--scales", "-1"], "2 folders"),
        (["--folders", "low,high", "--scales", "-1,0"], "0"),
        (["--folders", "low,high", "--scales", "-1,abc"], "not a number"),
        (["--folders", "low,nothere", "--scales", "-1,1"], "nothere"),
        (["--folders", "low,high", "--scales", "-1,1", "--extra_image"], "unrecognized"),
    ],
)
def test_train_images_bad_inputs(args, message, image_root, tmp_path, capsys):
    argv = ["--folder_main", str(image_root), "--output_dir", str(tmp_path / "o"), "--device", "cpu"] + args
    assert _exit_code(train_images_main, argv) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_train_images_missing_file_in_one_folder(image_root, tmp_path, capsys):
    (image_root / "high" / "y.png").unlink()
    argv = ["--folder_main", str(image_root), "--folders", "low,high", "--scales", "-1,1", "--device", "cpu",
            "--output_dir", str(tmp_path / "o")]
    assert train_images_main(argv) == 2
    line = _error_line(capsys)
    assert "'high'" in line and "'y'" in line


def test_sample_bad_slider_files(tmp_path, capsys):
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"nope")
    assert sample_main(["--slider", str(garbage), "--prompt", "x", "--output", str(tmp_path / "s")]) == 2
    assert "not a readable safetensors" in _error_line(capsys)
    assert sample_main(["--slider", str(tmp_path / "missing.safetensors"), "--prompt", "x"]) == 2
    assert "does not exist" in _error_line(capsys)
    assert not (tmp_path / "s").exists()


def _run_script(script, args, cwd):
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)


def test_official_shims_accept_the_official_flags(text_config, image_root, tmp_path):
    text = _run_script("trainscripts/textsliders/train_lora_xl.py",
                       ["--config_file", str(text_config), "--alpha", "1", "--rank", "2", "--device", "cpu",
                        "--name", "shim", "--attributes", "red, blue", "--prompts_file", str(tmp_path / "prompts.yaml")],
                       tmp_path)
    assert text.returncode == 0, text.stderr[-2000:]
    assert (tmp_path / "models" / "shim_alpha1.0_rank2_noxattn" / "shim_last.safetensors").is_file()
    # Loading the model shows no dependency's progress bars ("Loading weights", "Loading pipeline
    # components") or notices; what is left is ours: the run's bar and our messages.
    assert "Loading" not in text.stderr and "kernels" not in text.stderr, text.stderr[-2000:]
    image = _run_script("trainscripts/imagesliders/train_lora-scale-xl.py",
                        ["--config_file", str(text_config), "--alpha", "1", "--rank", "2", "--device", "cpu",
                         "--name", "ishim", "--folder_main", str(image_root), "--folders", "low, high",
                         "--scales", "-1, 1", "--attributes", "red"],
                        tmp_path)
    assert image.returncode == 0, image.stderr[-2000:]
    assert (tmp_path / "models" / "ishim_alpha1.0_rank2_noxattn" / "ishim_last.safetensors").is_file()
    bad = _run_script("trainscripts/textsliders/train_lora_xl.py", ["--config_file", str(tmp_path / "none.yaml")],
                      tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def _console(name):
    """The installed console command `name`, beside this interpreter (the venv's bin folder)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not installed beside {sys.executable}"
    return [str(path)]


@pytest.mark.parametrize("command", ["sliders-train", "sliders-train-images", "sliders-sample", "sliders-eval",
                                     "sliders-edit", "sliders-convert", "sliders-export", "textsliders-shim", "imagesliders-shim"])
def test_every_command_reports_a_bad_input_in_exactly_one_stderr_line(command, text_config, image_root, tmp_path):
    """Each bad input gets past the heavy imports (diffusers, transformers, bitsandbytes), whose
    import-time logging must not reach the terminal: exactly one line, exit 2, nothing written."""
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"nope")
    bad_prompts = tmp_path / "bad_prompts.yaml"
    bad_prompts.write_text("- target: x\n  guidance: 4\n")
    runs = {
        "sliders-train": (_console("sliders-train"), ["--config", str(text_config), "--prompts_file", str(bad_prompts)]),
        "sliders-train-images": (_console("sliders-train-images"),
                                 ["--folder_main", str(image_root), "--folders", "low,nothere", "--scales", "-1,1",
                                  "--output_dir", str(tmp_path / "o")]),
        "sliders-sample": (_console("sliders-sample"), ["--slider", str(garbage), "--prompt", "x",
                                                        "--output", str(tmp_path / "o")]),
        "sliders-eval": (_console("sliders-eval"), ["--slider", str(garbage), "--prompt", "x",
                                                    "--output", str(tmp_path / "o")]),
        "sliders-edit": (_console("sliders-edit"), ["--image", str(garbage), "--slider", str(garbage),
                                                    "--output", str(tmp_path / "o")]),
        "sliders-convert": (_console("sliders-convert"), [str(garbage), str(tmp_path / "o" / "x.safetensors")]),
        "sliders-export": (_console("sliders-export"), [str(garbage), "--ui", "diffusers"]),
        "textsliders-shim": ([sys.executable, str(ROOT / "trainscripts/textsliders/train_lora_xl.py")],
                             ["--config_file", str(text_config), "--prompts_file", str(bad_prompts)]),
        "imagesliders-shim": ([sys.executable, str(ROOT / "trainscripts/imagesliders/train_lora-scale-xl.py")],
                              ["--config_file", str(text_config), "--folder_main", str(image_root),
                               "--folders", "low,nothere", "--scales", "-1,1"]),
    }
    program, args = runs[command]
    env = {**os.environ, "PYTHONPATH": ""}
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        env.pop(name, None)
    result = subprocess.run([*program, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not (tmp_path / "o").exists() and not (tmp_path / "models").exists()


def test_dependency_logging_is_heard_only_with_verbose(tmp_path):
    """A dependency's logger (bitsandbytes' import notice, here a stand-in) is silent without -v
    and heard with it; our own warnings are heard either way."""
    script = (
        "import logging, sys, warnings\n"
        "from sliders.cli import _setup_logging\n"
        "_setup_logging(sys.argv[1] == 'verbose')\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('dependency notice')\n"
        "warnings.warn('dependency warning', UserWarning)\n"
        "logging.getLogger('sliders.trainer').warning('our warning')\n"
    )
    quiet = subprocess.run([sys.executable, "-c", script, "quiet"], capture_output=True, text=True, timeout=900)
    loud = subprocess.run([sys.executable, "-c", script, "verbose"], capture_output=True, text=True, timeout=900)
    assert quiet.stderr.strip().splitlines() == ["our warning"]
    assert "dependency notice" in loud.stderr and "dependency warning" in loud.stderr and "our warning" in loud.stderr
