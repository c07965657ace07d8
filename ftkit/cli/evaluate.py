"""``ftkit evaluate``, ``ftkit predict`` and ``ftkit compare``: argument parsing over ``ftkit.evaluate``."""

from __future__ import annotations

import argparse
import json
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1. Received: {text!r}")
    return value


def _checkpoint_flag(parser: argparse.ArgumentParser) -> None:
    from ftkit.evaluate.runs import CHECKPOINTS

    parser.add_argument("--checkpoint", choices=CHECKPOINTS,
                        help="a training checkpoint of the run folder (RUN/checkpoints/best.keras or last.keras) "
                             "instead of its final model.keras")


def _tta_flag(parser: argparse.ArgumentParser) -> None:
    from ftkit.evaluate.runs import TTA_HELP, TTA_MODES

    parser.add_argument("--tta", choices=list(TTA_MODES),
                        help=f"test-time augmentation (default: none): {TTA_HELP}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained model on labelled data and write a report bundle",
        description="Predict every image of DATA (in its order, no shuffling), compute metrics with scikit-learn "
        "and write report.json/.md/.html, confusion-matrix and reliability PNGs and predictions.csv. DATA is any "
        "source `ftkit train` reads; of one with splits, one split is evaluated (--split). Without DATA, the run's "
        "own data as its recipe.yaml names it, split as training split it: a val or test carved from a folder "
        "without split folders is carved again and checked to be the same files (ftkit_run.json).",
    )
    p.add_argument("model", metavar="MODEL_OR_RUN", help="run folder (model.keras + ftkit_run.json) or a .keras file in one")
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="a folder with one subfolder per class, a tree of split folders (train/ val/ test/), a CSV of "
                        "path,label[,split], or MNIST (its IDX files' folder or mnist.npz); default: the run's own "
                        "data and splits")
    p.add_argument("--split", metavar="NAME",
                   help="the split to evaluate: train, val or test. Of DATA with splits (default: test, else val, "
                        "else all of DATA); without DATA, or with DATA the run's training source, the run's own split "
                        "(default: test, else val), carved again where training carved it")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: RUN/report/<name of DATA>, e.g. RUN/report/catsdogs-test for "
                        "catsdogs/test, ending in -best with --checkpoint best and -tta-flip with --tta flip; beside "
                        "the report/val and report/test that training wrote)")
    p.add_argument("--top-k", type=_positive_int, nargs="+", metavar="K",
                   help="top-k accuracies (default: top-5, for data with more than 5 classes)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--allow-missing-classes", action="store_true",
                   help="accept DATA lacking some of the model's classes (they get support 0); with DATA only")
    p.add_argument("--only-model-classes", action="store_true",
                   help="evaluate only the images of DATA whose class the model knows (a run trained on digits 5-9 "
                        "on MNIST's 5-9); the others are left out and counted per class in the output and report; "
                        "with DATA only (the run's own data has the run's classes)")
    _tta_flag(p)
    _checkpoint_flag(p)
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser(
        "predict",
        help="class probabilities for image files or folders",
        description="Predict image files (folders are walked, every file tried whatever its extension; hidden "
                    "files and folders, names starting with '.', are skipped and counted). Unreadable files are "
                    "reported, not fatal. Exit code 1 when no file was predicted.",
    )
    p.add_argument("model", metavar="MODEL_OR_RUN", help="run folder or a .keras file in one")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=_positive_int, default=3, metavar="K", help="classes shown per image (default: 3)")
    p.add_argument("--csv", metavar="FILE",
                   help="also write every probability to this CSV file; with --tta, the averaged probabilities, "
                        "and a tta column says so")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    _tta_flag(p)
    _checkpoint_flag(p)
    p.set_defaults(func=_predict)

    p = subparsers.add_parser(
        "compare",
        help="compare two evaluated runs on the same images (McNemar's test, per-class and per-cell changes)",
        description="Compare the predictions.csv of two evaluations of the same data.",
    )
    p.add_argument("run_a", metavar="RUN_A", help="run folder, report folder or predictions.csv")
    p.add_argument("run_b", metavar="RUN_B", help="run folder, report folder or predictions.csv")
    p.add_argument("--out", metavar="DIR", help="write compare.json, compare.md and compare.html here")
    p.add_argument("--json", action="store_true", help="print the full comparison as JSON")
    p.add_argument("--split", default="test", metavar="NAME",
                   help="which evaluation of a run folder to compare, RUN/report/NAME: a split training evaluated "
                        "(test, val) or what `ftkit evaluate RUN DATA` wrote (default: test)")
    p.set_defaults(func=_compare)


def _evaluate(args: argparse.Namespace) -> int:
    from ftkit.data.sources import UNKNOWN_CLASS
    from ftkit.evaluate import evaluate_run
    from ftkit.evaluate.images import describe
    from ftkit.evaluate.runs import describe_tta

    report = evaluate_run(
        args.model, args.data, args.out, top_k=args.top_k, batch_size=args.batch_size,
        allow_missing_classes=args.allow_missing_classes, split=args.split, checkpoint=args.checkpoint,
        only_model_classes=args.only_model_classes, tta=args.tta,
    )
    if report["split_note"]:
        print(report["split_note"])
    if report["tta"]:
        print(describe_tta(report["tta"]))
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    for note in report["notes"]:  # e.g. a top-k with k >= the number of classes, left undefined
        print(f"note: {note}", file=sys.stderr)
    top_k = "".join(f", top-{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in report["top_k_accuracy"].items())
    print(f"{report['n_samples']} images, accuracy {report['accuracy']:.4f}, "
          f"balanced {report['balanced_accuracy']:.4f}{top_k}")
    for skipped in report["skipped"]:
        # Rows of classes the model does not know are counted per class in a warning above (MNIST's would be
        # thousands of lines); report.json lists each.
        if skipped["reason"] != UNKNOWN_CLASS or not report["unknown_classes"]:
            print(f"skipped {skipped['path']}: {describe(skipped)}", file=sys.stderr)
    print(f"report: {report['out_dir']}/{report['files']['html']}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ftkit.evaluate.images import count_by_reason, describe
    from ftkit.evaluate.predict import check_csv_target, predict_paths, top_k, write_predict_csv
    from ftkit.evaluate.runs import describe_tta

    if args.csv:
        check_csv_target(args.csv)
    result = predict_paths(args.model, args.paths, batch_size=args.batch_size, checkpoint=args.checkpoint,
                           tta=args.tta)
    for folder in result.empty_folders:
        print(f"no files found in {folder} (every file below it is tried, whatever its extension; hidden files and "
              f"folders are skipped)", file=sys.stderr)
    for entry in result.skipped:
        print(f"skipped {entry['path']}: {describe(entry)}", file=sys.stderr)
    for path, probs, failure in result.rows():
        if failure is not None:
            print(f"could not read {path}: {describe(failure)}", file=sys.stderr)
            continue
        best = top_k(probs[None], result.class_names, args.top_k)[0]
        print(path + "\t" + "\t".join(f"{name} {prob:.4f}" for name, prob in best))
    if args.csv:
        write_predict_csv(result, args.csv, k=args.top_k)
    print(f"{len(result.paths)} predicted, {len(result.failures)} unreadable, {count_by_reason(result.skipped)} "
          f"skipped" + (f"; {describe_tta(result.tta)}" if result.tta else ""), file=sys.stderr)
    return 0 if result.paths else 1


def _compare(args: argparse.Namespace) -> int:
    from ftkit.evaluate.compare import compare_runs, render_markdown

    result = compare_runs(args.run_a, args.run_b, out_dir=args.out, split=args.split)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render_markdown(result).split("## A right, B wrong")[0].rstrip())
        print(f"\nA right, B wrong: {len(result['a_right_b_wrong'])} images; A wrong, B right: "
              f"{len(result['a_wrong_b_right'])} images" + (f" (galleries in {args.out})" if args.out else ""))
    return 0
