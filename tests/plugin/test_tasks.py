"""The long jobs in the viewer: the session runs them through its Qt runner, the panel shows
progress and cancels; partial work is kept, one job at a time, errors reported."""

from __future__ import annotations

import threading

import pytest

from napari_sam.plugin._tasks import TaskPanel, qt_runner
from napari_sam.plugin.session import SamSession


@pytest.fixture
def runner(qtbot):
    busy: list[bool] = []
    session = SamSession(runner=qt_runner)
    r = TaskPanel(session, on_busy=busy.append)
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
    assert runner.session.task is runner.context and runner.context.title == "Job"
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


def test_a_job_cancelled_through_the_session_shows_it(runner, qtbot):
    """The widget cancels the jobs of a removed image through the session: the panel follows."""
    started, release = threading.Event(), threading.Event()
    results = []

    def body(ctx):
        started.set()
        while not ctx.cancelled():
            threading.Event().wait(0.005)
        release.wait(10)  # still finishing its slice while the panel shows the cancel
        return "partial"

    runner.start("Mine", body, lambda res, c: results.append((res, c)), owner="img")
    assert started.wait(5)
    assert runner.session.cancel_task(owner="other") is None  # another image's job goes on
    assert not runner.context.cancelled()
    assert runner.session.cancel_task(owner="img") is runner.context
    qtbot.waitUntil(lambda: not runner.cancel_button.enabled, timeout=2000)
    assert "cancelling" in runner.text.value
    release.set()
    runner.wait()
    assert results == [("partial", True)]
