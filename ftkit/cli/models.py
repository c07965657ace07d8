"""``ftkit models list|show|check``: what backbones exist, what they are, and whether they conform."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, describe and check backbones (built-in and plugins)",
                                   description="List, describe and check registered backbones.")
    parser.set_defaults(_parser=parser)
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")

    p = sub.add_parser("list", help="every backbone with family, source, parameters and input size")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-params", action="store_true", help="skip counting parameters (counted once per installed version, then cached)")
    p.set_defaults(func=_list)

    p = sub.add_parser("show", help="the metadata of one backbone")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_show)

    p = sub.add_parser("check", help="run the conformance suite on one backbone and print a pass/fail table")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_check)


def _list(args: argparse.Namespace) -> int:
    import dataclasses

    from ftkit.backbones import REGISTRY

    listing = REGISTRY.listing(count_params=not args.no_params)
    if args.json:
        print(json.dumps({
            "backbones": [dataclasses.asdict(r) for r in listing.rows],
            "problems": [dataclasses.asdict(p) for p in listing.problems],
            "conflicts": [{"name": n, "qualified_names": q} for n, q in listing.conflicts.items()],
            "shadowed": [{"name": n, "qualified_names": q} for n, q in listing.shadowed.items()],
        }, indent=2))
        return 0
    header = ("name", "family", "source", "parameters", "input")
    table = [header] + [
        (r.name, r.family, f"{r.distribution} {r.version or ''}".strip(),
         f"{r.parameters:,}" if r.parameters is not None else "-", "x".join(str(v) for v in r.default_input_shape))
        for r in listing.rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for name, qualified in listing.shadowed.items():
        print(f"\nnote: {name!r} is also provided by {' and '.join(repr(q) for q in qualified)}; the bare name "
              f"{name!r} is ftkit's own.", file=sys.stderr)
    for name, qualified in listing.conflicts.items():
        print(f"\nnote: {name!r} is provided by {len(qualified)} distributions, so it is listed as "
              f"{' and '.join(repr(q) for q in qualified)}; the bare name is ambiguous.", file=sys.stderr)
    if listing.problems:
        print("\nproblems (these backbones cannot be used; the others are unaffected):", file=sys.stderr)
        for p in listing.problems:
            source = f"{p.distribution} {p.version or ''}".strip()
            print(f"  {p.name} [{source}, {p.target}]: {p.error}", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    from ftkit.backbones import REGISTRY

    info = REGISTRY.info(args.name).as_dict()
    info["defined_at"] = REGISTRY.find(args.name)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        print(f"{key:22s} {value}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ftkit.backbones._check import check_backbone

    results = check_backbone(args.name)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        width = max(len(r.check) for r in results)
        print(f"conformance of {args.name!r}")
        for r in results:
            print(f"  {'PASS' if r.passed else 'FAIL'}  {r.check.ljust(width)}  {r.seconds:6.2f}s  {r.detail}")
        failed = sum(not r.passed for r in results)
        print(f"{len(results) - failed} passed, {failed} failed")
    return 0 if all(r.passed for r in results) else 1
