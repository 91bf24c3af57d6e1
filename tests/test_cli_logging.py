"""The CLI prints its own progress, not the INFO chatter of the libraries it drives."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import logging
from bench.cli import configure_logging
configure_logging({verbose})
logging.getLogger("onnx_ir.passes.common.unused_removal").info("Removed 138 unused nodes")
logging.getLogger("onnxscript").warning("a library warning")
logging.getLogger("lowrank_bench").info("timed a cell")
logging.getLogger("lowrank_bench").debug("epoch 1/3")
"""


def run_cli_logging(verbose: bool) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(verbose=verbose)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return done.stderr


def test_library_info_is_quiet_and_our_progress_shows():
    err = run_cli_logging(False)
    assert "timed a cell" in err and "a library warning" in err
    assert "Removed 138 unused nodes" not in err and "epoch 1/3" not in err


def test_verbose_shows_our_debug_and_library_info():
    err = run_cli_logging(True)
    assert "epoch 1/3" in err and "Removed 138 unused nodes" in err
