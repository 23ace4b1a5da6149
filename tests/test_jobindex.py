"""The spool's job index (store/jobindex.py): the order of the jobs, their ends, removals and repairs."""

from __future__ import annotations

import os

from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.jobindex import TOMBSTONE_SECONDS, WIDTH, Entry, JobIndex
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.rejections import Rejection
from spoolbatch.store.spool import Spool


def newest(index: JobIndex, after: str | None = None) -> list[str]:
    return [e.job for e in index.read().newest_first(after)]


def test_jobs_are_listed_last_taken_first_and_end_in_place(spool: Spool) -> None:
    index = JobIndex(spool)
    for i, job in enumerate(["a", "b", "c", "d"]):
        index.add(job, created=1000.0 + i)
    index.add("b", created=5000.0)  # taken twice (a crash between the claim and its line): one line stays
    index.ended("b", JobState.COMPLETED, finished=2000.0)
    index.ended("c", JobState.CANCELLED, finished=1990.0)
    view = index.read()
    assert newest(index) == ["d", "c", "b", "a"]
    assert len(view) == 4 and len(spool.job_index.read_bytes()) == 4 * WIDTH
    assert view.find("b") is not None and view.find("b").state == JobState.COMPLETED  # type: ignore[union-attr]
    assert view.find("b").created == 1001.0  # type: ignore[union-attr]
    assert view.counts() == {".": 2, "-": 0, "C": 1, "F": 0, "X": 1, "E": 0, "R": 0}
    assert [e.job for e in view.open_entries()] == ["a", "d"]
    assert [e.job for e in view.last_ended(5)] == ["b", "c"]  # by when they ended, not when they were taken
    assert newest(index, after="c") == ["b", "a"] and newest(index, after="a") == []
    assert newest(index, after="zz") == []  # a cursor the index never had: nothing after it


def test_a_removed_jobs_line_keeps_its_place_for_a_day(spool: Spool) -> None:
    index = JobIndex(spool)
    for i in range(6):
        index.add(f"j{i}", created=1000.0 + i, state=JobState.COMPLETED, finished=1100.0 + i)
    index.removed(["j3", "j4"], now=10_000.0)
    assert newest(index) == ["j5", "j2", "j1", "j0"]
    assert newest(index, after="j4") == ["j2", "j1", "j0"]  # a cursor on a removed job pages on from its place
    assert index.read().counts()["-"] == 2
    index.add("j3", created=20_000.0)  # an id given again once its job is gone: a new line, the newest
    assert newest(index) == ["j3", "j5", "j2", "j1", "j0"]
    # The clean-up's repair: a job whose files are gone is removed, removals past a day dropped.
    live = {f"j{i}": Entry(f"j{i}", "C", 1000.0 + i, 1100.0 + i) for i in (0, 1, 2, 5)} | {"j3": Entry("j3", ".", 2e4)}
    for job in live:
        Checkpoint(job=job).save(spool.checkpoint(job))
    repair = index.reconcile(now=10_000.0 + TOMBSTONE_SECONDS + 1, truth=live.get)
    assert repair.dropped == 2 and not repair.added and not repair.removed
    assert newest(index, after="j4") == [] and newest(index, after="j5") == ["j2", "j1", "j0"]


def test_torn_lines_are_left_out_and_written_over(spool: Spool) -> None:
    index = JobIndex(spool)
    index.add("a", created=1.0)
    index.add("b", created=2.0)
    with open(spool.job_index, "ab") as f:
        f.write(b".         3.00 half a li")  # a crash in the middle of an append
    assert newest(index) == ["b", "a"]
    index.add("c", created=3.0)
    assert newest(index) == ["c", "b", "a"] and os.path.getsize(spool.job_index) == 3 * WIDTH
    data = bytearray(spool.job_index.read_bytes())
    data[WIDTH:2 * WIDTH] = bytes(WIDTH)  # a power cut zeroed a block: that line is lost, the others stay
    spool.job_index.write_bytes(bytes(data))
    assert newest(index) == ["c", "a"]


def test_reconcile_rebuilds_the_index_from_the_files_in_order_of_creation(spool: Spool) -> None:
    for job, created, status in (("old", 100.0, JobState.COMPLETED), ("mid", 200.0, JobState.FAILED),
                                 ("new", 300.0, JobState.RUNNING)):
        Checkpoint(job=job, status=status, created_at=created, finished_at=created + 5).save(spool.checkpoint(job))
    spool.input("new").write_bytes(b"{}\n")
    Rejection("refused", "refused.jsonl", "empty", "the file is empty", at=250.0).save(spool)
    spool.input("claimed").write_bytes(b"{}\n")
    os.utime(spool.input("claimed"), (400.0, 400.0))
    index = JobIndex(spool)
    assert not spool.job_index.exists()
    repair = index.reconcile(now=1000.0)
    assert sorted(repair.added) == ["claimed", "mid", "new", "old", "refused"]
    assert newest(index) == ["claimed", "new", "refused", "mid", "old"]
    assert index.read().counts() == {".": 2, "-": 0, "C": 1, "F": 1, "X": 0, "E": 0, "R": 1}
    # A job that ended while its end went unrecorded, one whose files went by hand, one the index lost.
    Checkpoint(job="new", status=JobState.COMPLETED, created_at=300.0, finished_at=900.0).save(spool.checkpoint("new"))
    spool.input("new").unlink()
    spool.checkpoint("mid").unlink()
    lost = Checkpoint(job="lost", status=JobState.COMPLETED, created_at=150.0, finished_at=160.0)
    lost.save(spool.checkpoint("lost"))
    repair = index.reconcile(now=1000.0)
    assert (repair.added, repair.ended, repair.removed) == (["lost"], ["new"], ["mid"])
    assert newest(index) == ["claimed", "new", "refused", "lost", "old"]
    assert newest(index, after="mid") == ["lost", "old"]  # its line stays a day, where it was
    assert not index.reconcile(now=1000.0).changed  # nothing to do: nothing written


def test_each_line_names_its_project(spool: Spool) -> None:
    spool.input("a").write_bytes(b"{}\n")  # taken before the index's first build, which cannot know its folder
    index = JobIndex(spool)
    index.add("a", 1.0, project="team")  # the claim's own line: the folder's project
    index.add("b", 2.0, project="other")
    index.add("c", 3.0, JobState.COMPLETED, 4.0, project="team")
    view = index.read()
    assert [e.job for e in view.newest_first(project="team")] == ["c", "a"]
    assert [e.job for e in view.newest_first(project="team", codes={"C"})] == ["c"]
    assert view.counts("team") == {".": 1, "-": 0, "C": 1, "F": 0, "X": 0, "E": 0, "R": 0}
    assert [e.job for e in view.last_ended(5, "other")] == [] and view.find("b").project == "other"  # type: ignore[union-attr]
