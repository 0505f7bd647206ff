"""Every benchmark script runs in its smoke mode (``--smoke``: data_samples/ or generated
data, tiny settings, seconds), so a renamed argument cannot break one unseen.

The smoke modes never read ``../shared``. The scripts run in this process (``main(argv)``),
``data_pipeline.py --per-core`` too (it pins this process to one core for its run and gives
the cores back; TensorFlow's thread pools, set only in a fresh process, are left as they
are); ``gpu_throughput.sh`` is a shell script that runs ``train_throughput.py`` on Keras +
JAX. The figures of a smoke run mean nothing; what is checked is that each script gets to
its report and that the report's numbers are numbers.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"(-?[\d.]+|nan|inf)"


def load(name: str):
    """The benchmark script ``benchmarks/<name>.py`` as a module (its ``main`` not run)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _global_keras_state():
    """What a script may change globally (precision policy, backbone registry) goes back."""
    import keras

    from tfx_transfer.models import backbones

    registry = dict(backbones._REGISTRY)
    yield
    backbones._REGISTRY.clear()
    backbones._REGISTRY.update(registry)
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
    if keras.backend.backend() == "tensorflow":  # --smoke runs tf.functions eagerly (_smoke.py)
        import tensorflow as tf

        assert not tf.config.functions_run_eagerly(), "a --smoke run left eager mode on"


def run(name: str, capsys, *argv: str) -> str:
    load(name).main(["--smoke", *argv])
    return capsys.readouterr().out


def numbers(pattern: str, text: str) -> list[float]:
    """The numbers of the first line matching ``pattern`` (one group per number)."""
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{text[-3000:]}"
    return [float(g) for g in match.groups()]


def test_every_script_has_a_smoke_mode():
    scripts = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))
    tested = {name for name in globals() if name.startswith("test_")}
    for script in scripts:
        assert "--smoke" in (BENCHMARKS / f"{script}.py").read_text(), script
        assert f"test_{script}" in tested, f"benchmarks/{script}.py has no smoke test here"


@pytest.mark.parametrize("helper", ["_sample", "_smoke"])
def test_the_shared_helpers_examples_run(helper):
    import doctest
    import inspect

    module, finder = load(helper), doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module)
    for name, value in vars(module).items():  # decorated functions (a context manager): unwrapped
        if getattr(value, "__wrapped__", None) and value.__module__ == module.__name__:
            tests += finder.find(inspect.unwrap(value), name, module=False, globs=vars(module))
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False) == (0, sum(len(t.examples) for t in tests))
    assert any(t.examples for t in tests)


def test_smoke_modes_do_not_read_shared():
    for script in BENCHMARKS.glob("[!_]*.py"):
        module = load(script.stem)
        parse = getattr(module, "parse_args", None) or module.parse
        args = parse(["--smoke"])
        for key, value in vars(args).items():
            assert "shared" not in Path(str(value)).parts, f"{script.name} --smoke: {key}={value}"


@pytest.mark.slow
def test_accuracy(capsys):
    out = run("accuracy", capsys)
    for recipe in "abcde":
        (accuracy,) = numbers(rf"^seed 0 \({recipe}\) .*: accuracy {NUMBER} in", out)
        assert 0 <= accuracy <= 1, recipe
    assert out.count("| data_samples | 32 px |") == 5  # the summary table, one row per recipe


@pytest.mark.slow
def test_data_pipeline(capsys):
    out = run("data_pipeline", capsys)
    (legacy,) = numbers(rf"^legacy ImageDataGenerator.*: +{NUMBER} images/s", out)
    affine, keras_chain = numbers(rf"^ratio \(cached steady state / legacy\): {NUMBER}x with "
                                  rf"engine='affine', {NUMBER}x", out)
    assert legacy > 0 and affine > 0 and keras_chain > 0


@pytest.mark.slow
def test_data_pipeline_per_core(capsys):
    """--per-core in this process (a fresh one costs a TensorFlow import, most of the run):
    TensorFlow already runs here, so its thread pools are left as they are (said in the output);
    the process's cores come back afterwards."""
    import tensorflow as tf

    tf.config.list_logical_devices()  # TensorFlow initialised, whatever ran before
    cores = os.sched_getaffinity(0)
    out = run("data_pipeline", capsys, "--per-core")
    assert os.sched_getaffinity(0) == cores
    assert "per core (pinned to CPU" in out
    assert "TensorFlow's pools left as they were" in out
    rates = re.findall(rf"{NUMBER} img per CPU-second -> +{NUMBER} cores", out)
    assert len(rates) == 2 and all(float(r) > 0 for r, _ in rates), out


@pytest.mark.slow
def test_domain_adaptation(capsys, tmp_path):
    out = run("domain_adaptation", capsys, "--json", str(tmp_path / "da.json"))
    result = json.loads((tmp_path / "da.json").read_text())
    methods = ["source_only", "adabn", "coral", "adabn+coral", "adabn_plain"]
    assert sorted(result["mean_accuracy"]) == sorted(methods)
    assert all(0 <= v <= 1 for v in result["mean_accuracy"].values())
    for method in methods:
        assert re.search(rf"^{re.escape(method)} +[\d.]+ ", out, re.MULTILINE), method
    assert not Path(result["settings"]["target"]).exists()  # the shifted copy was temporary


def test_explain_cost(capsys):
    out = run("explain_cost", capsys)
    (explain,) = numbers(rf"explain / predict = {NUMBER}$", out)
    (tta,) = numbers(rf"TTA / predict = {NUMBER}$", out)
    assert explain > 0 and tta > 0


@pytest.mark.slow
def test_feature_cache(capsys):
    out = run("feature_cache", capsys)
    (ratio,) = numbers(rf"^per-epoch speed-up after the first epoch: {NUMBER}x", out)
    assert ratio > 0 and math.isfinite(ratio)


@pytest.mark.slow
def test_fit_overhead(capsys):
    out = run("fit_overhead", capsys)
    (ratio,) = numbers(rf"ratio recipe/fine_tune {NUMBER} ", out)
    assert ratio > 0


@pytest.mark.slow
def test_head_sweep(capsys, tmp_path):
    out = run("head_sweep", capsys, "--json", str(tmp_path / "sweep.json"))
    result = json.loads((tmp_path / "sweep.json").read_text())
    variants = load("head_sweep").VARIANTS
    assert list(result["results"]) == list(variants)
    for name, runs in result["results"].items():
        assert len(runs["best"]) == 1 and all(0 <= v <= 1 for v in runs["best"]), name
        assert name in out


@pytest.mark.slow
def test_few_shot(capsys, tmp_path):
    out = run("few_shot", capsys, "--json", str(tmp_path / "few_shot.jsonl"))
    records = [json.loads(line) for line in (tmp_path / "few_shot.jsonl").read_text().splitlines()]
    episodes = [r for r in records if r["part"] == "episodes"]
    assert [r["shots"] for r in episodes] == [1]
    assert sorted(episodes[0]["accuracy"]) == sorted(load("few_shot").METHODS)
    assert all(0 <= mean <= 1 for mean, _ in episodes[0]["accuracy"].values())
    added = {r["head"]: r["trials"] for r in records if r["part"] == "add_classes"}
    assert sorted(added) == ["avg, centred rows", "avg, scaled rows", "cosine-0"]
    assert all(0 <= t["old_after"] <= 1 for trials in added.values() for t in trials)
    assert numbers(r"^\s+cosine-0\s+" + NUMBER, out)


def test_make_shift(capsys, tmp_path):
    out = run("make_shift", capsys, "--out", str(tmp_path))
    shifts = sorted(load("make_shift").SHIFTS)
    for shift in shifts:
        (count,) = numbers(rf"^{NUMBER} images -> {re.escape(str(tmp_path / shift))}$", out)
        assert count == 30 == len(list((tmp_path / shift).rglob("*.jpg"))), shift


@pytest.mark.slow
def test_serve_load(capsys):
    """--smoke serves in this process (the CLI's `serve` flags, its parser): every request and
    warm-up call reached the server, whose batching figure is logged on shutdown."""
    out = run("serve_load", capsys)
    for level in (1, 2):
        row = numbers(rf"^ +{level} \| +{NUMBER} +{NUMBER} +{NUMBER} \| +{NUMBER} +{NUMBER} "
                      rf"+{NUMBER} \|", out)
        assert all(v > 0 for v in row), (level, row)
    rows, calls = numbers(rf"^server \(all levels and warm-up\): served {NUMBER} row\(s\) in "
                          rf"{NUMBER} model call\(s\)", out)
    assert rows == 2 * 8 + 3 and 1 <= calls <= rows, (rows, calls)  # 8 requests a level, 3 warm-up


def gpu_script_lines() -> tuple[list[str], list[list[str]]]:
    """gpu_throughput.sh's train_throughput.py arguments: (common to all, one list per line)."""
    script = (BENCHMARKS / "gpu_throughput.sh").read_text().replace("\\\n", " ")
    common = shlex.split(re.search(r"train_throughput\.py (.+?) \"\$@\"", script).group(1))
    lines = [shlex.split(m) for m in re.findall(r"^bench \d+ (.+)$", script, re.MULTILINE)]
    assert len(lines) == 3 and common[-2:] == ["--json", "$json"], (common, lines)
    return common[:-2], lines


@pytest.mark.slow
def test_train_throughput(capsys, tmp_path):
    """The python lines of gpu_throughput.sh (their flags, then --smoke), in this process."""
    common, lines = gpu_script_lines()
    assert common[:2] == ["--backend", "jax"]
    jsonl = tmp_path / "records.jsonl"
    for line in lines:  # without --backend jax: this process runs Keras on TensorFlow
        run("train_throughput", capsys, *common[2:], *line, "--json", str(jsonl), "--smoke")
    records = [json.loads(r) for r in jsonl.read_text().splitlines()]
    # --smoke trains its tiny backbone instead of ResNet50 / VGG16 (one record per phase)
    assert [(r["phase"], r["precision"]) for r in records] == [
        (1, "mixed_bfloat16"), (2, "mixed_bfloat16"), (1, "mixed_bfloat16"),
        (2, "mixed_bfloat16"), (2, "float32")]
    assert all(r["images_per_second"] > 0 and r["image_size"] == 32 for r in records)


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="Keras + JAX: run by `make test-jax` (KERAS_BACKEND=jax in .venv-jax)")
def test_gpu_throughput(tmp_path, capsys):
    """The script's shell is valid, and its first python line runs on Keras + JAX (--smoke)."""
    script = BENCHMARKS / "gpu_throughput.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    common, lines = gpu_script_lines()
    assert common[:2] == ["--backend", "jax"]
    jsonl = tmp_path / "records.jsonl"
    run("train_throughput", capsys, *common, *lines[0], "--json", str(jsonl))
    records = [json.loads(r) for r in jsonl.read_text().splitlines()]
    assert [(r["phase"], r["precision"], r["backend"]) for r in records] == [
        (1, "mixed_bfloat16", "jax"), (2, "mixed_bfloat16", "jax")]
    assert all(r["images_per_second"] > 0 for r in records)


@pytest.mark.slow
def test_transfer_protocol(capsys):
    out = run("transfer_protocol", capsys)  # --smoke: the few-shot column only
    assert "| method | 3 per class |" in out
    for method in load("transfer_protocol").METHODS.values():
        cells = numbers(rf"^\| {re.escape(method)} \| {NUMBER} ± {NUMBER} \(.*\) \|$", out)
        assert 0 <= cells[0] <= 1, method


@pytest.mark.slow
def test_export_formats(capsys):
    out = run("export_formats", capsys)
    rows = re.findall(rf"^\| (tflite \w+|ONNX \(onnxruntime\)|SavedModel) \| {NUMBER} \| {NUMBER} \| "
                      rf"{NUMBER} \| {NUMBER} \|", out, re.MULTILINE)
    assert [row[0] for row in rows] == ["SavedModel", "tflite float32", "tflite int8",
                                        "ONNX (onnxruntime)"]
    assert all(float(size) > 0 and float(ms) > 0 and 0 <= float(acc) <= 1
               for _, size, ms, acc, _ in rows)
    assert "int8 vs float32: accuracy" in out


@pytest.mark.slow
def test_unknown_classes(capsys):
    out = run("unknown_classes", capsys)
    for method in load("unknown_classes").METHODS:
        auroc, fpr = numbers(rf"^{method} +{NUMBER} +{NUMBER} ", out)
        assert 0 <= auroc <= 1 and 0 <= fpr <= 1, method
    (extra,) = numbers(rf"extra cost {NUMBER}%", out.replace("+", ""))
    assert extra > -100


@pytest.mark.slow
def test_multi_label(capsys):
    out = run("multi_label", capsys)
    for recipe in ("probe", "probe+thr", "kit"):
        mean_ap, micro_f1, macro_f1 = numbers(
            rf"^\| {re.escape(recipe)} \| {NUMBER} \| {NUMBER} \| {NUMBER} \|", out)
        assert 0 <= mean_ap <= 1 and 0 <= micro_f1 <= 1 and 0 <= macro_f1 <= 1, recipe
    assert out.count("(same files and labels: True)") == 2
