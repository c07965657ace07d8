"""``ftkit train``, ``ftkit export`` and ``ftkit lr-find``: parse arguments, call ftkit.training."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="fine-tune a backbone from a YAML recipe into a run folder",
                              description="Train from a recipe (or continue a run with --resume).")
    p.add_argument("recipe", nargs="?", help="the YAML recipe (optional with --resume: the run's own is used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe value (YAML scalar), e.g. --set schedule.phases[1].lr=1e-4")
    p.add_argument("--out", help="run folder to write (default: runs/<recipe>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run where it stopped")
    p.add_argument("--smoke", action="store_true", help="shrink the recipe to a run of seconds (pipeline check)")
    _add_distribution_arguments(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser("export", help="export a run's model (uint8 images in, probabilities out)",
                              description="Export RUN_DIR/model.keras, or the inference model of its best or last "
                                          "epoch, as keras, savedmodel or tflite.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (with model.keras and ftkit_run.json)")
    p.add_argument("--format", default="keras", choices=["keras", "savedmodel", "tflite"],
                   help="keras: model.keras; savedmodel: a SavedModel folder (signature serving_default, input "
                        "image_uint8); tflite: model.tflite. Each takes uint8 [batch, H, W, C] images at the run's "
                        "size and refuses others; preprocessing.json beside it says how to prepare an image "
                        "(default: %(default)s)")
    p.add_argument("--checkpoint", choices=["best", "last"],
                   help="export this epoch (checkpoints/best.keras: the best train.monitor value; last.keras: the last "
                        "completed epoch) instead of model.keras (the last epoch, unless the recipe set "
                        "train.final_model: best)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/export, or RUN_DIR/export-CHECKPOINT)")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("lr-find", help="learning-rate range test: loss against rate, PNG and suggestion",
                              description="Run the recipe's first phase with a growing rate and suggest one.")
    p.add_argument("recipe", help="the YAML recipe whose first phase is tested")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe value (YAML scalar), e.g. --set data.batch_size=16; repeatable")
    p.add_argument("--out", metavar="DIR",
                   help="folder for lr_find.png and lr_find.csv (default: a new runs/<recipe>-lr-find-<time>, "
                        "beside ftkit train's runs/<recipe>-<time>)")
    p.add_argument("--steps", type=int, default=100, help="training steps, one rate each (default: %(default)s)")
    p.add_argument("--start-lr", type=float, default=1e-7, metavar="LR",
                   help="rate of the first step (default: %(default)s)")
    p.add_argument("--end-lr", type=float, default=10.0, metavar="LR",
                   help="rate of the last step, reached geometrically; the test stops early when the loss "
                        "diverges (default: %(default)s)")
    p.set_defaults(func=_lr_find)


def _add_distribution_arguments(p: argparse.ArgumentParser) -> None:
    from ftkit.distribute import CLUSTERS, DEFAULT_JOIN_TIMEOUT, STRATEGIES

    g = p.add_argument_group("distributed training (see README, 'Distributed training')")
    g.add_argument("--strategy", choices=STRATEGIES,
                   help="override train.strategy: auto (multi_worker with a cluster, mirrored with several GPUs, "
                        "else default), default, mirrored, multi_worker")
    g.add_argument("--workers", metavar="HOST:PORT,HOST:PORT,...",
                   help="the multi-worker cluster, chief first (writes TF_CONFIG); same list on every worker")
    g.add_argument("--worker-index", type=int, metavar="N", help="this worker's position in --workers")
    g.add_argument("--cluster", choices=CLUSTERS, default="tf_config",
                   help="where the cluster comes from: TF_CONFIG (default) or Slurm's environment (srun)")
    g.add_argument("--join-timeout", type=float, default=DEFAULT_JOIN_TIMEOUT, metavar="SECONDS",
                   help="give up (the process is killed: status 137) when the cluster has not formed after this "
                        "long")


def _train(args) -> int:
    from ftkit import distribute
    from ftkit.training import train

    if args.recipe is None and args.resume is None:
        raise ValueError("ftkit train needs a RECIPE or --resume RUN_DIR. Received: neither")
    if (args.workers is None) != (args.worker_index is None):
        raise ValueError("--workers and --worker-index go together. "
                         f"Received: workers={args.workers!r}, worker_index={args.worker_index!r}")
    if args.resume is not None and (args.overrides or args.out or args.smoke):
        given = [flag for flag, value in (("--set", args.overrides), ("--out", args.out), ("--smoke", args.smoke))
                 if value]
        raise ValueError(f"--resume continues {args.resume} with its own recipe.yaml, in that folder: "
                         f"{', '.join(given)} would be ignored. Start a new run to change them (backbone.init_from can "
                         f"start from its weights). Received: {' '.join(given)} with --resume")
    if args.workers is not None:
        distribute.use_workers(args.workers, args.worker_index)
    try:
        train(args.recipe, overrides=args.overrides, out=args.out, smoke=args.smoke, resume=args.resume,
              strategy=args.strategy, cluster=args.cluster, join_timeout=args.join_timeout)
    except KeyboardInterrupt as interrupted:
        # The last completed epoch's checkpoint is intact (written atomically); a traceback says nothing useful.
        run_dir = getattr(interrupted, "run_dir", None)
        what = (f"Continue from the last completed epoch with `ftkit train --resume {run_dir}` (a run stopped before "
                f"its first epoch ended starts over)." if run_dir else "Nothing was saved to resume.")
        print(f"\nftkit train: interrupted. {what}", file=sys.stderr, flush=True)
        return 130
    except distribute.WorkerLostError as exc:
        print(f"ftkit train: error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # A normal exit would wait at the coordination service's shutdown barrier for the dead worker.
        os._exit(1)
    return 0


def _export(args) -> int:
    from ftkit.training import export_run

    print(export_run(args.run_dir, format=args.format, out=args.out, checkpoint=args.checkpoint))
    return 0


def _lr_find(args) -> int:
    from ftkit.training import lr_find

    lr_find(args.recipe, overrides=args.overrides, out=args.out, steps=args.steps, start_lr=args.start_lr,
            end_lr=args.end_lr)
    return 0
