"""Final reports that carry the job's small output and bring back the slot's next job (one round trip per job
end), against the fake server; and the fallback to upload-then-report for a server that predates them."""

from __future__ import annotations

import sys
from pathlib import Path

from cloudpilot.domain.shutdown import ShutdownCode
from cloudpilot.pilot.fake_transport import FakeTransport
from tests.test_pilot_agent import make_agent, member, states

PY = sys.executable


def test_a_freed_slot_gets_its_next_job_from_the_final_report(tmp_path: Path) -> None:
    fake = FakeTransport(report_extensions=True)
    jobs = [fake.add_job(PY, ["-c", f"print('job {i}')"]) for i in range(4)]
    shutdown = make_agent(tmp_path, fake, cores=1).run()

    assert shutdown.code is ShutdownCode.WORK_COMPLETED
    # Payloads of milliseconds are reported once, at their end, with how long they ran.
    assert all(states(fake, j) == ["done"] for j in jobs)
    given_by_match = [c for c in fake.calls_of("match") if c.args["offer"]]
    finals = [fake.reports(j)[-1] for j in jobs]
    assert all(0 <= f["ran_seconds"] < 1 for f in finals)
    assert [("next" in f) for f in finals] == [True] * 4  # each final report offered the freed slot
    assert finals[0]["next"]["cores"] == 1
    assert len(given_by_match) >= 1 and fake.calls_of("upload_output", failed=None) == []
    assert member(fake.outputs[jobs[2]], "job.log") == b"job 2\n"  # the output went inline
    # Jobs 2-4 came with the reports: the pilot never asked /pilots/match for them.
    assert sum(1 for j in jobs if fake.jobs[j].attempt == 1) == 4


def test_a_big_output_is_uploaded_and_frees_the_slot_first(tmp_path: Path) -> None:
    fake = FakeTransport(report_extensions=True)
    code = "import os; open('big.bin', 'wb').write(os.urandom(100_000))"  # does not compress below 64 KiB
    big = fake.add_job(PY, ["-c", code], output_files=["big.bin"])
    make_agent(tmp_path, fake).run()
    assert len(fake.calls_of("upload_output")) == 1 and len(member(fake.outputs[big], "big.bin")) == 100_000
    final = fake.reports(big)[-1]
    assert "output" not in final and "next" not in final
    assert states(fake, big) == ["done"] and 0 <= final["ran_seconds"] < 1


def test_a_server_that_predates_the_extensions_gets_upload_then_report(tmp_path: Path) -> None:
    fake = FakeTransport(report_extensions=True, old_server=True)
    first = fake.add_job(PY, ["-c", "print('one')"])
    second = fake.add_job(PY, ["-c", "print('two')"])
    make_agent(tmp_path, fake).run()

    # The first final report (with ran_seconds, output and next) is refused; then running, upload, done.
    assert states(fake, first) == ["running", "done"] and states(fake, second) == ["running", "done"]
    assert fake.report_extensions is False  # learnt once, for every later job
    assert len(fake.calls_of("report", failed=True)) == 1
    assert member(fake.outputs[first], "job.log") == b"one\n" and member(fake.outputs[second], "job.log") == b"two\n"


def test_a_payload_that_outlives_a_second_is_reported_running_while_it_runs(tmp_path: Path) -> None:
    fake = FakeTransport(report_extensions=True)
    job = fake.add_job(PY, ["-c", "import time; time.sleep(1.6)"])
    make_agent(tmp_path, fake).run()
    running, final = fake.reports(job)
    assert running["state"] == "running" and final["state"] == "done" and "ran_seconds" not in final
    matched_at = fake.calls_of("match")[0].at
    running_at, done_at = (c.at for c in fake.calls_of("report") if c.args["job_id"] == job)
    assert 1.0 <= running_at - matched_at < 1.5 and done_at - matched_at >= 1.6  # a second in; at the end
