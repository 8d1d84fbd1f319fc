"""The background job runner: progress, cancel keeping partial work, one job at a time, errors."""

from __future__ import annotations

import threading

import pytest

from napari_sam.plugin._tasks import TaskRunner


@pytest.fixture
def runner(qtbot):
    busy: list[bool] = []
    r = TaskRunner(on_busy=busy.append)
    qtbot.addWidget(r.native)
    r.busy_log = busy
    return r


def test_result_arrives_on_done_with_progress_shown(runner, qtbot):
    release = threading.Event()
    results = []

    def body(ctx):
        ctx.progress(3, 10, "working")
        release.wait(10)
        return "result"

    assert runner.start("Job", body, lambda res, cancelled: results.append((res, cancelled)))
    assert runner.busy and runner.visible
    qtbot.waitUntil(lambda: runner.bar.max == 10 and runner.bar.value == 3, timeout=5000)
    assert "3/10" in runner.text.value and "working" in runner.text.value
    release.set()
    runner.wait()
    assert results == [("result", False)]
    assert not runner.busy and not runner.visible
    assert runner.busy_log == [True, False]


def test_cancel_keeps_what_was_done(runner):
    started = threading.Event()
    results = []

    def body(ctx):
        done = []
        started.set()
        for i in range(1000):
            if ctx.cancelled():
                break
            done.append(i)
            ctx.progress(i + 1, 1000)
            threading.Event().wait(0.005)
        return done

    runner.start("Long", body, lambda res, cancelled: results.append((res, cancelled)))
    assert started.wait(5)
    runner.cancel()
    assert not runner.cancel_button.enabled
    runner.wait()
    (done, cancelled), = results
    assert cancelled
    assert 0 < len(done) < 1000
    assert done == list(range(len(done)))  # the partial work is returned, in order


def test_one_job_at_a_time(runner):
    release = threading.Event()
    first = []
    runner.start("A", lambda ctx: release.wait(10), lambda res, c: first.append(res))
    assert not runner.start("B", lambda ctx: 1, lambda res, c: first.append("B ran"))
    release.set()
    runner.wait()
    assert first == [True]


def test_errors_go_to_on_error_not_on_done(runner):
    errors, results = [], []

    def body(ctx):
        raise ValueError("bad slice")

    runner.start("Fail", body, lambda res, c: results.append(res), errors.append)
    runner.wait()
    assert results == []
    assert len(errors) == 1 and "bad slice" in str(errors[0])
    assert not runner.busy
