"""``colabrcnn fetch-weights``: download, verify and cache pretrained weights."""
from __future__ import annotations

import argparse

from .. import weights

HELP = ("download, verify and cache pretrained weights (coco, imagenet-resnet50, "
        "keras-resnet50/101)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?",
                        help=f"what to fetch: {', '.join(weights.REGISTRY)}, a URL, or a "
                             f"Google Drive link or file id")
    parser.add_argument("--cache", default=None,
                        help=f"folder to keep weights in (default: ${weights.CACHE_ENV}, "
                             f"else {weights.DRIVE_CACHE} when Drive is mounted, else "
                             f"{weights.LOCAL_CACHE})")
    parser.add_argument("--list", action="store_true", help="list the known weights")
    parser.add_argument("--force", action="store_true",
                        help="download again even if a good copy is cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.list or not args.name:
        print("\n".join(weights.list_registry()))
        print(f"cache: {args.cache or weights.default_cache_dir()}")
        return 0 if args.list else 2
    path = weights.fetch(args.name, cache_dir=args.cache, progress=not args.quiet,
                         force=args.force)
    print(path)
    return 0
