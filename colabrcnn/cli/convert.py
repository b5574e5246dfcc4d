"""``colabrcnn convert PATH OUT --to coco``: write annotations as COCO JSON."""
from __future__ import annotations

import argparse
import json
import warnings

from ..data.convert import to_coco
from ..data.formats import load
from ..data.validate import validate
from .validate import add_loader_arguments, loader_kwargs

HELP = "convert annotations (to COCO JSON)"
FORMATS = ("coco",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``colabrcnn convert PATH --to coco OUT.json``."""
    parser.add_argument("path", metavar="PATH",
                        help="annotation file or folder (any format colabrcnn reads)")
    parser.add_argument("out", metavar="OUT", help="file to write, e.g. instances.json")
    parser.add_argument("--to", choices=FORMATS, default="coco",
                        help="output format (default coco)")
    add_loader_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``colabrcnn convert``: write the file, say what was written and what was lost."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = load(args.path, **loader_kwargs(args))
        report = validate(ds, check_images=False)
        out = to_coco(ds, args.out)
    with open(out, encoding="utf-8") as f:
        doc = json.load(f)
    print(f"wrote {out}: {len(doc['images'])} images, {len(doc['annotations'])} annotations, "
          f"{len(doc['categories'])} categories ({ds.format} -> COCO)")
    if report.errors:
        print(f"{len(report.errors)} annotation problem(s) could not be converted; run "
              f"'colabrcnn validate {args.path}' for the list")
        return 1
    return 0
