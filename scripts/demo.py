"""`make demo`: the main job on data_samples/, end to end, in about 1.5 min on 2 CPU cores.

1. ``tfx_transfer.train``: VGG16 at 64x64 px, ``weights="auto"`` (ImageNet when
   cached or downloadable, else random initialisation -- never a hanging
   download), phase 1 = 15 head-only epochs on cached backbone features, phase 2 =
   5 fine-tuning epochs of the top block (``block5``) at a 100x lower learning rate;
   best checkpoint, validation metrics and plots, SavedModel export.
2. ``tfx_transfer.evaluate_model`` on the *export* (through the SavedModel, no Keras
   model) over ``data_samples/val``: the same figures as ``metrics.json``.
3. One prediction from the export: ``load_exported`` + ``predict_files``.

``--quick`` runs the same steps at the smallest settings (32 px, one epoch per
phase): the test suite runs it to check the plumbing and the summary, not the accuracy.

Example:
    $ python scripts/demo.py --out runs/demo          # or: make demo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Small enough for 2 CPU cores offline; big enough to show both phases.
SETTINGS = dict(
    backbone="vgg16", weights="auto", image_size=64, head="flatten", augmentation="none",
    head_epochs=15, fine_tune_epochs=5, blocks="default", head_lr=1e-3, fine_tune_lr=1e-5,
    batch_size=32, cache_images="memory", seed=1337,
)
# --quick: the same job at the smallest settings
QUICK = dict(image_size=32, head_epochs=1, fine_tune_epochs=1)


def cli_flags(settings: dict | None = None) -> str:
    """The settings (default: SETTINGS) as the flags of ``tfx-transfer train`` (the same names)."""
    return " ".join(f"--{name.replace('_', '-')} {value}"
                    for name, value in (settings or SETTINGS).items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="run folder (replaced if it holds a run)")
    parser.add_argument("--data", default=str(ROOT / "data_samples"), help="image folder")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest settings (32 px, 1 + 1 epochs): checks the plumbing")
    args = parser.parse_args()
    settings = {**SETTINGS, **(QUICK if args.quick else {})}
    start = time.perf_counter()
    out, data = Path(args.out), Path(args.data)
    if not (data / "train").is_dir():
        raise SystemExit(f"{data}/train is missing: run `make data-samples` first.")
    import tfx_transfer as tt
    from tfx_transfer.layout import RunFolder
    from tfx_transfer.runs.job import train

    if RunFolder(out).config.exists():
        print(f"demo: replacing the previous run in {out}")
        shutil.rmtree(out)

    shown = " ".join(f"{k}={v}" for k, v in settings.items())
    print(f"demo: tfx_transfer.train({str(data)!r}, {str(out)!r}, {shown})\n"
          f"demo: (the same as: tfx-transfer train {data} {cli_flags(settings)} --out {out})\n",
          flush=True)
    result = train(data, out, **settings)
    trained = time.perf_counter()

    export = result["paths"]["export"]
    print(f"\ndemo: evaluating the export {export} on {data / 'val'} through the SavedModel")
    exported = tt.load_exported(export)
    again = tt.evaluate_model(exported, data / "val", top_k=result["metrics"].get("top_k"), verbose=False)
    print(f"demo: export accuracy {again['accuracy']:.4f} (metrics.json: "
          f"{result['metrics']['accuracy']:.4f}); confusion matrix {again['confusion_matrix']}")

    sample = sorted(p for p in (data / "val").rglob("*") if p.is_file())[0]
    row = tt.predict_files(exported, [sample], top_k=3, progress=False)[0]
    top = ", ".join(f"{name} {score:.3f}" for name, score in row["top"])
    print(f"demo: predict_files({sample.relative_to(ROOT) if sample.is_relative_to(ROOT) else sample})"
          f" -> {top}")
    print(f"demo: the same from a shell: tfx-transfer predict {export} {sample}")

    config = result["config"]
    print("\n" + "=" * 78)
    print(f"demo: weights used: {config['weights']} (requested {config['weights_requested']}: "
          f"{config.get('weights_note', '')})")
    print(f"demo: settings: {config['backbone']} {config['image_size'][0]}x{config['image_size'][1]} "
          f"px, {config['head_epochs']} head + {config['fine_tune_epochs']} fine-tuning epochs; "
          f"best {result['best']['monitor']} {result['best']['value']:.4f} at epoch "
          f"{result['best']['epoch'] + 1}")
    top = (f"top-{result['metrics']['top_k']} {result['metrics']['top_k_accuracy']:.4f}, "
           if "top_k_accuracy" in result["metrics"] else "")  # none when k >= classes
    print(f"demo: validation accuracy {result['metrics']['accuracy']:.4f}, {top}macro F1 "
          f"{result['metrics']['macro_avg']['f1']:.4f}")
    paths = result["paths"]
    print(f"demo: pictures: {paths['history_png']}, {paths['confusion_matrix']}, "
          f"{paths['predictions']}")
    print(f"demo: train {trained - start:.0f} s, total {time.perf_counter() - start:.0f} s")
    print("=" * 78)
    (out / "demo.json").write_text(json.dumps(
        {"settings": settings, "weights_used": config["weights"],
         "accuracy": result["metrics"]["accuracy"], "export_accuracy": again["accuracy"],
         "prediction": {"path": str(sample), "top": row["top"]},
         "seconds": round(time.perf_counter() - start, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
