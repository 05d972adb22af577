"""`python -m imbalance_bench` and the `imbench` console script.

The stop-signal handlers go in before the heavy imports (torch, Hydra), so that a SIGTERM or
Ctrl-C during start-up also ends with one line and exit code 75 (signals.py).
"""

from imbalance_bench.signals import Interrupted, report_stop, stop_at_once


def main() -> None:
    try:
        with stop_at_once():
            from imbalance_bench.cli import main as cli_main

            cli_main()  # its own stop_at_once nests in this one
    except Interrupted as exc:  # during the imports above
        raise SystemExit(report_stop("imbench", exc)) from None


if __name__ == "__main__":
    main()
