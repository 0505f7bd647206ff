"""The code in README.md and docs/*.md runs, or says in the markdown why it does not.

* Python blocks run in order, one namespace per markdown file, in a temporary working
  folder, on ``data_samples/`` at small settings: ``SUBSTITUTIONS`` below replaces the
  placeholders a block names (``photos/``, ``image_size=224``, ``weights="imagenet"``,
  epochs, ...), their ``tf.function`` s run eagerly (no tracing of a step or two per phase:
  ``_functions_run_eagerly``). A block that cannot run here is preceded by ``<!-- not-run: reason -->``;
  ``NOT_RUN`` counts them per file, so adding one is a visible change to this file.
* Shell blocks: every ``tfx-transfer ...`` command is parsed by the CLI's own parser,
  every ``python benchmarks/X.py ...`` by that script's, every ``make T`` names a
  Makefile target and every ``bash benchmarks/X.sh`` exists (other commands, such as
  ``curl`` or ``docker``, are not checked).
* Every fence names its language (python, bash or text), module paths written
  ``tfx_transfer.a.b`` or ``tfx_transfer/a/b.py`` exist, and so does every ``tt.<name>``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.eager import functions_run_eagerly

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"
IMAGE = SAMPLES / "val" / "circle" / "circle_000.jpg"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_DOCS = [*DOCS, ROOT / "benchmarks" / "README.md"]
LANGUAGES = ("python", "bash", "text")

# Placeholders of the docs -> what the tests run instead. (regex, replacement); a
# replacement may name @RUN@ (a run folder with a trained model.keras and export/) or
# @SERVER@ (`tfx-transfer serve` on that export), made only when a block needs them. Every entry must match somewhere (see
# test_every_substitution_is_used), so the table cannot keep stale rows.
SUBSTITUTIONS: list[tuple[str, str]] = [
    # the user's folders and files -> data_samples/ (3 classes of procedural images)
    (r'"(?:photos|xray_source)/?"', repr(str(SAMPLES / "train"))),          # class folders only
    (r'"(?:new_labelled_photos|new_camera|xray_target)/"', repr(str(SAMPLES))),  # train/ + val/
    (r'"cat\.jpg"', repr(str(IMAGE))),
    (r'"new_things/"', repr(str(ROOT / "tests" / "data" / "new_classes"))),  # a class not in data_samples
    (r'"runs/photos/model\.keras"', '"@RUN@/model.keras"'),   # a model trained by `train`
    (r'"runs/photos/export"', '"@RUN@/export"'),              # its export
    (r'"http://localhost:8501', '"@SERVER@'),                 # `tfx-transfer serve` of that run
    # small settings: the "tinycam" backbone (tests/tiny_backbone.py: three convolutions,
    # blocks b1..b3) at 32 px, random weights, one epoch per phase, few finder steps
    (r"\bresnet50\b", "tinycam"),
    (r'"conv5"', '"b3"'),
    (r'"conv4"', '"b2"'),
    (r"image_size=\(224, 224\)", "image_size=(32, 32)"),
    (r"input_shape=\((?:224, 224|128, 128), 3\)", "input_shape=(32, 32, 3)"),
    (r"image_size=(?:224|128)\b", "image_size=32"),
    (r'weights="imagenet"', "weights=None"),
    # README's StagedUnfreeze schedule: stages at epochs 5 and 10 of 15 -> at 1 and 2 of 3, so
    # that both stages run (README_CHECKS); spaced, so that the row below leaves it
    (r"epochs=15,(\s*callbacks=\[tt\.StagedUnfreeze)", r"epochs = 3,\1"),
    (r"\{5: ([^,{}]+), 10: ([^,{}]+)\}", r"{1: \1, 2: \2}"),
    (r"\b(\w*epochs)=[1-9]\d*", r"\1=1"),
    (r"tt\.find_lr\(model, data\.train\)", "tt.find_lr(model, data.train, num_steps=4)"),
]



def _both_stages_ran(namespace: dict) -> None:
    """README's plain `model.fit` with StagedUnfreeze reached its last stage: b2 (and b3) train."""
    from tfx_transfer.models.parts import model_parts

    layers = model_parts(namespace["model"]).backbone_model.layers
    training = sorted({layer.name.split("_")[0] for layer in layers if layer.trainable and layer.weights})
    assert training == ["b2", "b3"], f"blocks that train after the README's fit: {training}"


# What a block must have done, checked on the namespace right after it ran: (file, a text of
# the block, check). Each must find its block.
AFTER_BLOCK: list[tuple[str, str, Callable[[dict], None]]] = [
    ("README.md", "callbacks=[tt.StagedUnfreeze(", _both_stages_ran),
]


# Python blocks marked `<!-- not-run: reason -->`, per file (0 when absent).
NOT_RUN = {"docs/serving.md": 1}

# Files whose Python blocks train models: seconds to a minute each on 2 cores.
SLOW = {"README.md", "docs/tour.md", "docs/transfer.md", "docs/adaptation.md", "docs/serving.md"}


@dataclass
class Block:
    path: Path
    line: int  # line of the first code line (1-based)
    language: str
    code: str
    not_run: str | None  # the reason, when marked


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with their `not-run` markers."""
    found, lines = [], path.read_text().splitlines()
    i, previous = 0, ""
    while i < len(lines):
        opening = re.match(r"^\s*```(\S*)\s*$", lines[i])
        if not opening:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{rel(path)}:{i + 1}: code fence never closed"
        marker = re.fullmatch(r"<!-- not-run: (.+) -->", previous)
        found.append(Block(path, i + 2, opening.group(1), "\n".join(lines[i + 1:end]),
                           marker.group(1) if marker else None))
        i, previous = end + 1, ""
    return found


def substitute(code: str, value: Callable[[str], str], used: set[int] | None = None) -> str:
    """``code`` with every SUBSTITUTIONS pattern replaced; ``@RUN@`` etc. asked from ``value``."""
    for index, (pattern, replacement) in enumerate(SUBSTITUTIONS):
        code, count = re.subn(pattern, replacement, code)
        if count and used is not None:
            used.add(index)
    for token in ("@RUN@", "@SERVER@"):
        if token in code:
            code = code.replace(token, value(token))
    return code


# -- fixtures: what a placeholder can stand for --------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """What a run folder holds for adapt and serve: model.keras and export/1/.

    The "tinybnrelu" backbone (tests/tiny_backbone.py: conv + BatchNorm + ReLU in two
    blocks; BatchNorm is what adapt's default method needs) at 32 px, its head trained for
    one epoch on data_samples/ (cheaper than a whole `train` job; a third of MobileNet's
    CPU, and what the blocks do with the run does not depend on the backbone). The saved
    model loads without the backbone registered (its layers are in the .keras file).
    """
    import tfx_transfer as tt
    from tests.tiny_backbone import tinybnrelu_registered

    out = tmp_path_factory.mktemp("docs") / "run"
    folder = tt.load_image_folder(SAMPLES, image_size=32)
    with tinybnrelu_registered() as backbone:
        model = tt.build_transfer_model(backbone, folder.num_classes, input_shape=32,
                                        weights=None, head="avg", class_names=folder.class_names)
        tt.fine_tune(model, folder.train, head_epochs=1, fine_tune_epochs=0, verbose=0)
        out.mkdir()
        model.save(out / "model.keras")
        tt.export_saved_model(model, out / "export")
    return out


@pytest.fixture(scope="module")
def server(trained_run):
    """`tfx-transfer serve`'s server on the run's export, model name "photos", in a thread."""
    pytest.importorskip("uvicorn")
    from tfx_transfer.serving.background import start_server

    with start_server(trained_run / "export", "photos", port=0) as running:
        yield running.url


@pytest.fixture
def placeholder(request) -> Callable[[str], str]:
    fixtures = {"@RUN@": "trained_run", "@SERVER@": "server"}
    return lambda token: str(request.getfixturevalue(fixtures[token]))


# -- Python blocks ----------------------------------------------------------------------


def _doc_param(path: Path):
    marks = [pytest.mark.slow] if rel(path) in SLOW else []
    return pytest.param(path, id=rel(path), marks=marks)


@pytest.mark.parametrize("path", [_doc_param(p) for p in DOCS
                                  if any(b.language == "python" for b in blocks(p))])
def test_python_blocks_run(path, tmp_path, monkeypatch, placeholder, tinycam):
    import keras

    from tfx_transfer.models import backbones

    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    registry = dict(backbones._REGISTRY)
    namespace: dict = {"__name__": f"docs.{path.stem}"}
    ran = checked = 0
    checks = [entry for entry in AFTER_BLOCK if entry[0] == rel(path)]
    eager = functions_run_eagerly()  # tests/eager.py: why
    try:
        for block in blocks(path):
            if block.language != "python" or block.not_run:
                continue
            code = substitute(block.code, placeholder)
            # padded so that a traceback names the markdown file's own line numbers
            compiled = compile("\n" * (block.line - 1) + code, str(path), "exec")
            try:
                exec(compiled, namespace)
            except Exception as exc:
                raise AssertionError(f"{rel(path)}:{block.line}: this block failed "
                                     f"(as run, after the substitutions):\n{code}") from exc
            ran += 1
            for check in [c for f, text, c in checks if text in block.code]:
                check(namespace)
                checked += 1
        assert checked == len(checks), f"{rel(path)}: a block of AFTER_BLOCK was not found"
    finally:
        eager.close()
        backbones._REGISTRY.clear()
        backbones._REGISTRY.update(registry)
        keras.config.set_dtype_policy("float32")
    print(f"{rel(path)}: {ran} Python block(s) run, {NOT_RUN.get(rel(path), 0)} not run")
    assert ran > 0


def test_not_run_markers_are_counted():
    counts = {rel(p): sum(1 for b in blocks(p) if b.not_run) for p in DOCS}
    assert {k: v for k, v in counts.items() if v} == NOT_RUN
    for path in DOCS:  # a marker always stands right before a block
        text = path.read_text()
        for match in re.finditer(r"<!-- not-run: .+ -->\n(.*)", text):
            assert match.group(1).startswith("```"), f"{rel(path)}: {match.group(0)!r}"
        marked = [b for b in blocks(path) if b.not_run]
        assert all(b.language == "python" for b in marked), rel(path)


def test_every_fence_names_its_language():
    bad = [f"{rel(b.path)}:{b.line - 1} ```{b.language}" for p in SHELL_DOCS for b in blocks(p)
           if b.language not in LANGUAGES]
    assert not bad, f"tag each code block with one of {LANGUAGES}: {bad}"


def test_every_substitution_is_used():
    used: set[int] = set()
    for path in DOCS:
        for block in blocks(path):
            if block.language in ("python", "bash"):
                substitute(block.code, lambda token: token, used)
    stale = [SUBSTITUTIONS[i][0] for i in range(len(SUBSTITUTIONS)) if i not in used]
    assert not stale, f"SUBSTITUTIONS rows that match no block any more: {stale}"


def test_substitute_replaces_placeholders():
    code = ('data = tt.load_image_folder("photos/", image_size=(224, 224))\n'
            'tt.train("photos", "runs/photos", weights="imagenet", head_epochs=10, epochs=40)')
    out = substitute(code, lambda token: token)
    assert out == (f"data = tt.load_image_folder({str(SAMPLES / 'train')!r}, image_size=(32, 32))\n"
                   f"tt.train({str(SAMPLES / 'train')!r}, \"runs/photos\", weights=None, "
                   "head_epochs=1, epochs=1)")


# -- shell blocks -------------------------------------------------------------------------


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """``(line, command)`` per command line, backslash continuations joined."""
    out, pending, start = [], "", 0
    for number, line in enumerate(block.code.splitlines(), start=block.line):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return [(n, c) for n, c in out if c.strip() and not c.lstrip().startswith("#")]


def _benchmark_parser(script: str) -> Callable:
    path = ROOT / "benchmarks" / script
    assert path.is_file(), f"{script} is not in benchmarks/"
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "parse_args", None) or module.parse


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w.-]*):", text, re.MULTILINE))


def check_command(command: str) -> str | None:
    """``None`` when the command is fine or not ours to check, else what is wrong."""
    from tfx_transfer.cli import build_parser

    words = command.split()
    if words[0] not in ("tfx-transfer", "python", "python3", "make", "bash"):
        return None
    try:
        argv = shlex.split(command, comments=True)
    except ValueError as exc:
        return f"not a shell command ({exc})"
    if argv[0] == "tfx-transfer":
        parse: Callable = build_parser().parse_args
        args = argv[1:]
    elif argv[0].startswith("python") and len(argv) > 1 and argv[1].startswith("benchmarks/"):
        parse, args = _benchmark_parser(argv[1].removeprefix("benchmarks/")), argv[2:]
    elif argv[0] == "make":
        missing = [t for t in argv[1:] if "=" not in t and t not in _makefile_targets()]
        return f"no Makefile target {missing}" if missing else None
    elif argv[0] == "bash" and len(argv) > 1:
        return None if (ROOT / argv[1]).is_file() else f"{argv[1]} does not exist"
    else:
        return None
    try:
        parse(args)
    except SystemExit as exc:
        return f"its parser rejects it (exit status {exc.code}; the error is above)"
    return None


@pytest.fixture
def exact_flags(monkeypatch):
    """Parsers without prefix matching, so that a doc's `--head-epoch` fails for `--head-epochs`."""
    init = argparse.ArgumentParser.__init__

    def without_abbreviations(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "allow_abbrev": False})

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", without_abbreviations)


@pytest.mark.parametrize("path", SHELL_DOCS, ids=rel)
def test_shell_commands_parse(path, exact_flags):
    errors, checked = [], 0
    for block in blocks(path):
        if block.language != "bash":
            continue
        for line, written in shell_commands(block):
            command = substitute(written, lambda token: token)
            problem = check_command(command)
            checked += command.split()[0] in ("tfx-transfer", "python", "make", "bash")
            if problem:
                errors.append(f"{rel(path)}:{line}: {written}\n    -> {problem}")
    assert not errors, "\n".join(errors)
    if any(b.language == "bash" for b in blocks(path)):
        assert checked, f"{rel(path)}: no command checked in its shell blocks"


# -- names in the prose --------------------------------------------------------------------


def _module_defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name) == name for a in node.names):
                return True
    return False


def resolve(reference: str) -> bool:
    """Does ``tfx_transfer.a.b[.name]`` (or ``tfx_transfer/a/b.py``) exist?"""
    import tfx_transfer

    parts = reference.removesuffix(".py").replace("/", ".").split(".")
    base = ROOT
    for i, part in enumerate(parts):
        if (base / part).is_dir():
            base = base / part
            continue
        if (base / f"{part}.py").is_file():
            rest = parts[i + 1:]
            return not rest or (len(rest) == 1 and _module_defines(base / f"{part}.py", rest[0]))
        if base == ROOT / "tfx_transfer" and i == len(parts) - 1:
            return part in tfx_transfer._EXPORTS or part == "__version__"
        return i == len(parts) - 1 and _module_defines(base / "__init__.py", part)
    return True


def test_module_paths_and_public_names_exist():
    import tfx_transfer

    missing = []
    for path in SHELL_DOCS:
        text = path.read_text()
        for ref in sorted(set(re.findall(r"tfx_transfer(?:[./][A-Za-z_]\w*)+", text))):
            if not resolve(ref):
                missing.append(f"{rel(path)}: {ref}")
        for name in sorted(set(re.findall(r"\btt\.([A-Za-z_]\w*)", text))):
            if name not in tfx_transfer._EXPORTS:
                missing.append(f"{rel(path)}: tt.{name}")
    # README's module table names modules relative to the package
    table = (ROOT / "README.md").read_text().split("## What is in the kit", 1)[1].split("\n\n")[1]
    for row in table.splitlines()[2:]:
        for module in re.findall(r"`([a-z_.]+)`", row.split("|")[1]):
            if not resolve(f"tfx_transfer.{module}"):
                missing.append(f"README.md module table: {module}")
    assert not missing, missing


def test_stated_defaults_match_the_code():
    from tfx_transfer.training.finetune import DEFAULT_FINE_TUNE_LR, DEFAULT_HEAD_LR

    tour = (ROOT / "docs" / "tour.md").read_text()
    ratio = re.search(r"fine-tunes at a (\d+)x lower learning\s+rate", tour)
    assert ratio and int(ratio.group(1)) == round(DEFAULT_HEAD_LR / DEFAULT_FINE_TUNE_LR)
    for path in DOCS:
        for value in re.findall(r"default[^`\n]{0,20}`--head-lr ([0-9.e-]+)`", path.read_text()):
            assert float(value) == DEFAULT_HEAD_LR, f"{rel(path)}: --head-lr {value}"
        for value in re.findall(r"default[^\n]{0,40}`--fine-tune-lr ([0-9.e-]+)`", path.read_text()):
            assert float(value) == DEFAULT_FINE_TUNE_LR, f"{rel(path)}: --fine-tune-lr {value}"
    # the demo's time: one figure wherever it is stated
    figures = {rel(p): re.findall(r"demo[^\n]*?(about [\d.]+ min)", p.read_text())
               for p in (ROOT / "README.md", ROOT / "docs" / "tour.md", ROOT / "scripts" / "demo.py")}
    assert all(figures.values()) and len({f for fs in figures.values() for f in fs}) == 1, figures
