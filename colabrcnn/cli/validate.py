"""``colabrcnn validate PATH``: check annotations and images; list every problem.

Also holds the loader options that ``colabrcnn convert`` shares.
"""
from __future__ import annotations

import argparse
import warnings

from ..data.formats import load
from ..data.validate import validate

HELP = "check annotations and images; list every problem"


def add_loader_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``colabrcnn validate`` and ``colabrcnn convert``."""
    parser.add_argument("--image-dir", default=None,
                        help="folder of the images, if not where the annotations say")
    parser.add_argument("--mask-dir", default=None,
                        help="read PATH as an image folder with this folder of mask PNGs")
    parser.add_argument("--class-attribute", default=None,
                        help="VIA: the region attribute that holds the class name")


def loader_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`colabrcnn.data.formats.load` from those options."""
    kw = {"image_dir": args.image_dir, "mask_dir": args.mask_dir,
          "class_attribute": args.class_attribute}
    return {k: v for k, v in kw.items() if v is not None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``colabrcnn validate PATH``."""
    parser.add_argument("path", metavar="PATH",
                        help="annotation file or folder: VIA or COCO JSON, LabelMe JSON(s), or "
                             "a folder with images/ and masks/")
    add_loader_arguments(parser)
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names you expect; other labels are errors")
    parser.add_argument("--no-image-check", action="store_true",
                        help="do not open the images (faster; misses broken or resized files)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first problem that loses data")
    parser.add_argument("--max-issues", type=int, default=50,
                        help="problems listed per severity (default 50)")


def run(args: argparse.Namespace) -> int:
    """``colabrcnn validate``: print the report; exit status 1 when data would be lost."""
    with warnings.catch_warnings():
        # The report lists everything the readers would warn about, with places.
        warnings.simplefilter("ignore", UserWarning)
        ds = load(args.path, **loader_kwargs(args))
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] \
            if args.classes else None
        report = validate(ds, check_images=not args.no_image_check, classes=classes,
                          strict=args.strict)
    print(f"{ds.format}: {args.path}")
    print(report.format(max_issues=args.max_issues))
    return 0 if report.ok else 1
