"""The lock that lets one process make a file while the others wait for it."""

import threading
import time

from bench.atomic import exclusive_lock


def test_the_second_holder_is_told_and_waits_for_the_first(tmp_path):
    target = tmp_path / "ckpt" / "baseline.pt"
    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with exclusive_lock(target):
            holding.set()
            time.sleep(0.3)
            target.write_text("trained")
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait(5)
    with exclusive_lock(target, on_wait=lambda: order.append("waiting")):
        order.append("second in: " + target.read_text())
    thread.join()
    assert order == ["waiting", "first done", "second in: trained"]


def test_a_free_lock_does_not_report_waiting(tmp_path):
    told: list[str] = []
    with exclusive_lock(tmp_path / "x.pt", on_wait=lambda: told.append("waiting")):
        pass
    assert told == [] and (tmp_path / "x.pt.lock").exists()
