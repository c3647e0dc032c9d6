"""``glus data synth OUT``: write the synthetic RefVOS benchmark (:mod:`glus.data.benchmark`) in MeViS layout."""

from __future__ import annotations

import argparse

from rich.console import Console

from glus.commands import at_least


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: write the synthetic RefVOS benchmark")
    actions = p.add_subparsers(dest="data_command", required=True)
    synth = actions.add_parser("synth", help="train / val / test splits of tiered synthetic clips (MeViS layout)")
    synth.add_argument("out", help="folder to write train/, val/, test/ into")
    synth.add_argument("--videos", type=at_least(1), nargs="+", default=[100, 25, 25], metavar="N",
                       help="videos per split: one number for all, or three (train val test); default 100 25 25")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=at_least(4), default=12, help="frames per video (default 12)")
    synth.add_argument("--size", type=at_least(1), nargs=2, default=[64, 96], metavar=("H", "W"),
                       help="frame size (default 64 96)")
    synth.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from glus.data.benchmark import write_benchmark
    from glus.errors import GLUSError

    if len(args.videos) not in (1, 3):
        raise GLUSError("--videos takes one number (every split) or three (train val test)")
    if min(args.size) < 16:
        raise GLUSError("--size: frames of at least 16x16")
    counts = args.videos[0] if len(args.videos) == 1 else args.videos
    written = write_benchmark(args.out, counts, seed=args.seed, num_frames=args.frames, height=args.size[0],
                              width=args.size[1])
    Console(soft_wrap=True).print("wrote " + ", ".join(f"{s}: {p}" for s, p in written.items()), highlight=False)
    return 0
