"""``tomomatch demo``: the README's main job on built-in simulated data."""

from __future__ import annotations

from ..demo import run_demo
from ._outputs import output_folder


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="simulate -> match (h=+1, -1) -> extract -> compare-hands / hand, end to end",
        description="Run the seed benchmark's workflow end to end on a built-in simulation with a "
        "known defocus hand, and report picking precision/recall and the hand verdicts.",
    )
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--true-hand", type=int, choices=[1, -1], default=1, help="hand used by the simulator")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--angular-step", type=float, default=30.0, help="degrees")
    p.add_argument("--device", default="cpu")
    p.add_argument("--processes", type=int, default=2, help="single-threaded CPU worker processes")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    output_folder(args.out, "--out")
    summary = run_demo(
        args.out,
        true_hand=args.true_hand,
        seed=args.seed,
        angular_step_deg=args.angular_step,
        device=args.device,
        processes=args.processes,
        quiet=args.quiet,
    )
    return 0 if summary["hand_correct"] else 1
