"""The CLI is thin and quiet: `--help`/`--version` without TensorFlow, every default from the
function it calls, flags the epilogs name exist, and no native TensorFlow log on stderr."""

from __future__ import annotations

import argparse
import configparser
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import write_class_folders
from tfx_transfer.cli import COMMANDS, _is_native_noise, build_parser
from tfx_transfer.commands.flags import signature_defaults

ROOT = Path(__file__).resolve().parents[1]
NATIVE_NOISE = re.compile(r"oneDNN|cuda|absl|^[IWE]\d{4} \d\d:\d\d:\d\d", re.IGNORECASE | re.MULTILINE)


def entry_point() -> tuple[str, str]:
    """setup.cfg's console script: (module, function)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    name, target = (part.strip() for part in
                    config["options.entry_points"]["console_scripts"].strip().split("="))
    assert name == "tfx-transfer"
    module, function = target.split(":")
    return module, function


def script_code(*args: str, before: str = "", after: str = "") -> str:
    """Python code that runs ``tfx-transfer ARGS`` as pip's script does; stderr ends with what
    got imported. ``before``/``after``: code run after the script's module is imported and
    after the command (whatever its outcome)."""
    module, function = entry_point()
    return (f"import sys\nsys.argv = ['tfx-transfer', *{list(args)!r}]\n"
            f"from {module} import {function}\n{before}\n"
            f"try:\n    status = {function}()\n"
            f"finally:\n{textwrap.indent(after, '    ')}\n"
            "    print('imported', 'tensorflow' in sys.modules, 'keras' in sys.modules, "
            "file=sys.stderr)\nsys.exit(status)\n")


def script_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_script(*args: str, timeout: float = 120, before: str = "",
               after: str = "") -> subprocess.CompletedProcess:
    """``tfx-transfer ARGS`` as pip's script runs it (:func:`script_code`)."""
    return subprocess.run([sys.executable, "-c", script_code(*args, before=before, after=after)],
                          capture_output=True, text=True, env=script_env(), cwd=ROOT,
                          timeout=timeout)


def test_help_version_and_weights_where_import_neither_tensorflow_nor_keras(monkeypatch,
                                                                            tmp_path):
    from tfx_transfer._compat import keras_home  # Keras's own answer (imports Keras here)
    from tfx_transfer.models.weights import _keras_home_before_import

    for args, shown in ((["--help"], "usage: tfx-transfer"), (["--version"], "tfx-transfer 0.1.0"),
                        (["weights", "where"], f"{keras_home() / 'models'}\n")):
        done = run_script(*args)
        assert done.returncode == 0, done.stderr
        assert shown in done.stdout
        assert done.stderr == "imported False False\n"  # nothing else on stderr
    assert "find-lr" in run_script("--help").stdout
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # (Keras reads it once, when imported)
    assert _keras_home_before_import() == tmp_path


def _functions() -> dict[str, list]:
    """The library functions each command calls, whose signatures give its defaults."""
    from tfx_transfer.adaptation.adapt import adapt
    from tfx_transfer.adaptation.run import adapt_run
    from tfx_transfer.evaluation.evaluate import evaluate_model
    from tfx_transfer.evaluation.explain_plots import explain_files
    from tfx_transfer.export.exported import predict_files
    from tfx_transfer.export.saved_model import export_saved_model
    from tfx_transfer.export.tflite import export_tflite
    from tfx_transfer.models.weights import fetch_weights
    from tfx_transfer.runs.extend import add_classes_run
    from tfx_transfer.runs.job import train
    from tfx_transfer.runs.report import evaluate_run
    from tfx_transfer.serving.app import ModelServer, serve
    from tfx_transfer.training.lr_finder import find_lr
    from tfx_transfer.training.pretraining import pretrain

    # evaluate's table flags (--images, --x-col, ...) are train's: a run's table settings
    return {"train": [train], "evaluate": [evaluate_run, evaluate_model, train], "weights": [fetch_weights],
            "pretrain": [pretrain], "export": [export_saved_model, export_tflite],
            "predict": [predict_files], "serve": [serve, ModelServer], "explain": [explain_files],
            "find-lr": [train, find_lr], "adapt": [adapt_run, adapt],
            "add-classes": [add_classes_run]}


# Flags that are the CLI's own, not a keyword argument with a default (output format, inputs)
CLI_ONLY = {"train": {"out", "config", "resume"}, "evaluate": set(), "weights": set(),
            "pretrain": {"backbone", "out", "resume"}, "export": {"labels", "class_names", "tflite", "onnx"},
            "predict": {"json"}, "serve": {"model_name"}, "explain": {"out"}, "find-lr": {"out"},
            "adapt": {"out"}, "add-classes": {"out"}}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_default_comes_from_the_signature_of_the_function_it_calls():
    functions = _functions()
    parsers = _subparsers(build_parser())
    parsers["weights"] = _subparsers(parsers["weights"])["fetch"]
    assert set(parsers) == set(functions) == {c.name for c in COMMANDS}
    for name, parser in parsers.items():
        defaults: dict = {}
        for function in reversed(functions[name]):
            defaults.update(signature_defaults(function))
        flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        assert flags, name
        for action in flags:
            if action.dest in CLI_ONLY[name]:
                continue
            assert action.dest in defaults, f"{name} --{action.dest}: not a keyword argument"
            default = defaults[action.dest]
            assert action.default in (argparse.SUPPRESS, default), (name, action.dest)
            shown = "none" if default is None else str(default)
            assert action.help.endswith(f"(default: {shown})"), (name, action.dest, action.help)


def test_find_lr_has_trains_build_flags_and_defaults():
    from tfx_transfer.runs.job import train_defaults

    parsers = _subparsers(build_parser(["find-lr", "train"]))
    find_lr = {a.dest: a for a in parsers["find-lr"]._actions}
    train = {a.dest: a for a in parsers["train"]._actions}
    for name in ("backbone", "weights", "image_size", "augmentation", "head", "units", "dropout",
                 "batch_size", "seed", "validation_split"):
        assert find_lr[name].help == train[name].help, name
        assert f"(default: {'none' if train_defaults()[name] is None else train_defaults()[name]})" \
            in find_lr[name].help
    assert train_defaults()["head"] is None and "(default: none)" in find_lr["head"].help
    assert "none: avg, spatial for a multi-label table" in find_lr["head"].help


def test_examples_in_the_epilogs_use_flags_that_exist():
    parsers = _subparsers(build_parser())
    checked = 0
    for command in COMMANDS:
        for used, rest in re.findall(r"tfx-transfer ([a-z-]+)((?:(?!tfx-transfer).)*)",
                                     command.epilog or ""):
            known = {s for a in parsers[used]._actions for s in a.option_strings}
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
                assert flag in known, f"{command.name}'s epilog: tfx-transfer {used} {flag}"
                checked += 1
    assert checked >= 10


def test_native_log_lines_below_the_level_are_dropped():
    assert _is_native_noise("I0000 00:00:1796215712.361443   14528 port.cc:153] oneDNN custom "
                            "operations are on.", 1)
    assert _is_native_noise("WARNING: All log messages before absl::InitializeLog() is called "
                            "are written to STDERR", 3)
    assert _is_native_noise("2024-01-01 10:00:00.000001: W tensorflow/core/x.cc:12] slow", 2)
    assert not _is_native_noise("2024-01-01 10:00:00.000001: W tensorflow/core/x.cc:12] slow", 1)
    assert not _is_native_noise("E0000 00:00:1.5 7 cuda_dnn.cc:8579] Unable to register", 2)
    assert _is_native_noise("E0000 00:00:1.5 7 cuda_dnn.cc:8579] Unable to register", 3)
    assert not _is_native_noise("UserWarning: a Python warning", 3)

    code = ("import os, sys, tfx_transfer_cli\n"
            "from tfx_transfer.cli import quiet_native_log\n"
            "with quiet_native_log():\n"
            "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called "
            "are written to STDERR\\n')\n"
            "    os.write(2, b'I0000 00:00:1796215712.361443   14528 port.cc:153] oneDNN on\\n')\n"
            "    os.write(2, b'E0000 00:00:1796215712.361443   14528 cuda_dnn.cc:8579] Unable\\n')\n"
            "    print('a Python warning', file=sys.stderr)\n"
            "    os.write(2, b'F0000 00:00:1.5 7 x.cc:1] a fatal error stays\\n')\n"
            "print('after', file=sys.stderr)\n")
    for level, expected in (("3", "a Python warning\nF0000 00:00:1.5 7 x.cc:1] a fatal error "
                                  "stays\nafter\n"), ("0", None)):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT),
                                   "TF_CPP_MIN_LOG_LEVEL": level}, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        if expected is not None:
            assert done.stderr == expected
        else:  # level 0: every line reaches the terminal
            assert done.stderr.count("\n") == 6 and "oneDNN on" in done.stderr


# In the script's process, before the command runs: "tinycam" (tests/tiny_backbone.py) joins the
# registry when main() registers the kit's Keras objects (importing it earlier would import Keras).
WITH_TINYCAM = """\
import tfx_transfer
assert 'keras' not in sys.modules  # the script's module and the package: no Keras yet
register_objects = tfx_transfer._register_objects
registered = []  # the context manager, kept referenced: collecting it would remove tinycam
def register_with_tinycam():
    register_objects()
    from tests.tiny_backbone import tinycam_registered
    registered.append(tinycam_registered())
    registered[0].__enter__()
tfx_transfer._register_objects = register_with_tinycam
"""
# After the command: the kit's Keras objects it registered, and those a new registration adds
REGISTERED = """\
import keras
def kits():
    return sorted(n for n in keras.saving.get_custom_objects() if n.startswith('tfx_transfer>'))
names = kits()
register_objects()
print('registered', *names)
print('missing', *sorted(set(kits()) - set(names)))
"""


@pytest.mark.slow  # one tiny training run in a fresh process (TensorFlow starts)
def test_train_command_prints_no_native_tensorflow_log_and_registers_the_kits_objects(tmp_path):
    """``tfx-transfer train``: no native TensorFlow log line on stderr, and the kit's Keras objects
    registered by the command (the script's module leaves it to main()): all of them, also
    those that training never imports (FuseProbabilities), as ``import tfx_transfer`` does."""
    data = write_class_folders(tmp_path / "data", classes=("cats", "dogs"), per_class=4, size=40)
    run = tmp_path / "run"
    done = run_script("train", str(data), "--out", str(run), "--backbone", "tinycam", "--weights",
                      "none", "--image-size", "32", "--augmentation", "light", "--head-epochs",
                      "1", "--fine-tune-epochs", "0", "--batch-size", "4", "--validation-split",
                      "0.5", "--verbose", "2", timeout=600, before=WITH_TINYCAM, after=REGISTERED)
    assert done.returncode == 0, done.stderr
    assert (run / "model.keras").is_file() and (run / "export" / "1").is_dir()
    assert done.stderr.endswith("imported True True\n")
    assert not NATIVE_NOISE.search(done.stderr), done.stderr
    registered, missing = done.stdout.splitlines()[-2:]
    assert missing == "missing", done.stdout[-2000:]  # a new registration adds nothing
    names = registered.split()[1:]
    for name in ("Preprocess", "Backbone", "TransferModel", "FuseProbabilities",
                 "DiscriminativeOptimizer", "Augmentation"):
        assert f"tfx_transfer>{name}" in names, names


def test_a_closed_pipe_ends_the_command_quietly():
    """`tfx-transfer ... | head`: the reader going away is exit status 1, never a traceback."""
    proc = subprocess.Popen([sys.executable, "-c", script_code("weights", "where")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env=script_env())
    proc.stdout.close()  # the reader is gone before the command prints its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert err == "imported False False\n", err  # no traceback, no "Exception ignored"
