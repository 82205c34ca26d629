"""Load note: wall and CPU time around a call, episodes per second, and a busy flag from the load average."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from core.load_note import LoadNote, measure, render_load_note, timed_call


def test_busy_when_load_exceeds_cores():
    loads = iter([1.0, 3.5])
    with measure(loadavg=lambda: next(loads), cores=2) as m:
        pass
    note = m.note(episodes=3000)
    assert note.load1 == 3.5 and note.cores == 2 and note.busy
    assert "the machine was busy" in render_load_note(note)
    with measure(loadavg=lambda: 2.0, cores=2) as m:
        pass
    assert not m.note().busy  # equal to the core count is not above it
    assert "busy" not in render_load_note(m.note())


def test_wall_cpu_and_rate():
    def spin():
        t = time.process_time()
        while time.process_time() - t < 0.15:
            pass
        time.sleep(0.1)
        return 7

    out, note = timed_call(spin, episodes=500)
    assert out == 7
    assert note.wall_s >= 0.25 and 0.1 <= note.cpu_s <= note.wall_s
    assert note.episodes_per_s == pytest.approx(500 / note.wall_s)
    text = render_load_note(note)
    assert "episodes/s" in text and f"on {note.cores} cores" in text


def test_children_cpu_is_counted():
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass"
    with measure() as m:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert m.note().cpu_s >= 0.2


def test_note_before_the_block_ends_and_no_episodes():
    m = measure()
    with pytest.raises(RuntimeError, match="after the with-block"):
        m.note()
    assert LoadNote(1.0, 1.0, None, 0.1, 2).episodes_per_s is None
    assert LoadNote(0.0, 0.0, 10, 0.1, 2).episodes_per_s is None
    assert "episodes/s" not in render_load_note(LoadNote(1.0, 1.0, None, 0.1, 2))
