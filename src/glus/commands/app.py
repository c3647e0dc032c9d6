"""``glus app``: the web demo (:mod:`glus.app`; needs ``pip install 'glus[app]'``)."""

from __future__ import annotations

import argparse

from glus.commands import at_least


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="a web demo in the browser: upload a video, type expressions, see and "
                                   "download the masks (offline on the embedded model by default)")
    p.add_argument("--model", default=None, help="a glus checkpoint folder or hub id (default: the embedded "
                                                 "demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=at_least(1), default=7860, help="port (default 7860)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--max-frames", type=at_least(1), default=120,
                   help="longer videos are strided down to at most this many frames (default 120)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glus.app import launch

    launch(args.model, host=args.host, port=args.port, device=args.device, max_frames=args.max_frames)
    return 0
