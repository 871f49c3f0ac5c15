"""zramfs.tuning on files in a temporary folder: what swapon changes and what swapoff puts back."""

import os

import pytest

from zramfs import tuning


@pytest.fixture
def knobs(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    exact = tmp_path / "page-cluster"
    exact.write_text("0\n")
    poll = tmp_path / "guest_halt_poll_ns"
    poll.write_text("0\n")
    settings = {str(exact): "3", str(poll): "200000"}
    kw = {"optional": {str(poll)}, "at_least": {str(poll)}}
    return run_dir, exact, poll, settings, kw


def test_apply_sets_each_value_and_restore_puts_the_old_ones_back(knobs):
    run_dir, exact, poll, settings, kw = knobs
    changed = tuning.apply(str(run_dir), settings, **kw)
    assert changed == {str(exact): ("0", "3"), str(poll): ("0", "200000")}
    assert exact.read_text() == "3" and poll.read_text() == "200000"
    # A second swapon changes nothing and keeps the first values found.
    assert tuning.apply(str(run_dir), settings, **kw) == {}
    assert tuning.restore(str(run_dir)) == {str(exact): "0", str(poll): "0"}
    assert exact.read_text() == "0" and poll.read_text() == "0"
    assert os.listdir(run_dir) == []


def test_a_machine_already_above_an_at_least_value_keeps_its_own(knobs):
    run_dir, exact, poll, settings, kw = knobs
    poll.write_text("400000\n")
    exact.write_text("3\n")
    assert tuning.apply(str(run_dir), settings, **kw) == {}
    assert poll.read_text() == "400000\n"
    assert os.listdir(run_dir) == []


def test_an_optional_setting_this_machine_lacks_is_left_out(knobs):
    run_dir, exact, poll, settings, kw = knobs
    poll.unlink()
    assert tuning.apply(str(run_dir), settings, **kw) == {str(exact): ("0", "3")}
    assert tuning.restore(str(run_dir)) == {str(exact): "0"}


def test_a_required_setting_that_is_missing_is_a_clear_error(knobs):
    run_dir, exact, poll, settings, kw = knobs
    exact.unlink()
    with pytest.raises(tuning.TuningError, match="cannot read .*page-cluster"):
        tuning.apply(str(run_dir), settings, **kw)
    assert poll.read_text() == "0\n"  # nothing half done
    assert os.listdir(run_dir) == []


def test_a_setting_the_kernel_will_not_let_us_write_is_reported_and_left_alone(knobs, monkeypatch):
    # In a container /sys is mounted read-only: swapon must still work there.
    run_dir, exact, poll, settings, kw = knobs
    write = tuning._write

    def read_only_poll(path, value):
        if path == str(poll):
            raise tuning.TuningError(30, f"cannot set {path} to {value}: Read-only file system")
        write(path, value)

    monkeypatch.setattr(tuning, "_write", read_only_poll)
    refused = []
    changed = tuning.apply(str(run_dir), settings, refused=refused, **kw)
    assert changed == {str(exact): ("0", "3")}
    assert [e.errno for e in refused] == [30] and "guest_halt_poll_ns" in refused[0].strerror
    assert poll.read_text() == "0\n"
    # Only what was changed is put back.
    assert tuning.restore(str(run_dir)) == {str(exact): "0"}
    assert os.listdir(run_dir) == []
