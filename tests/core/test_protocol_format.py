"""The job file and the event lines shared by the add-on and the server."""

from __future__ import annotations

import json

import pytest

from blender_microexp.core.protocol import JobSpec, ProtocolError, decode_event, encode_event


def test_job_round_trip(tmp_path):
    spec = JobSpec(clip="/c.mp4", output="/out", frames=(3, 40), flow="tvl1", stages="coarse")
    spec.write(tmp_path / "job.json")
    back = JobSpec.read(tmp_path / "job.json")
    assert back == spec


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"output": "/o"}, "names no 'clip'"),
        ({"clip": "/c", "output": "/o", "flow": "magic"}, "Unknown flow mode"),
        ({"clip": "/c", "output": "/o", "stages": "all"}, "Unknown stages"),
        ({"clip": "/c", "output": "/o", "frames": [1]}, "frames"),
        ({"clip": "/c", "output": "/o", "colour": "red"}, "unknown keys: colour"),
        ({"clip": "/c", "output": "/o", "protocol": 99}, "protocol 99"),
    ],
)
def test_bad_jobs_are_refused_with_one_sentence(tmp_path, payload, message):
    (tmp_path / "job.json").write_text(json.dumps(payload))
    with pytest.raises(ProtocolError, match=message):
        JobSpec.read(tmp_path / "job.json")


def test_unreadable_job_file(tmp_path):
    with pytest.raises(ProtocolError, match="does not exist"):
        JobSpec.read(tmp_path / "nope.json")
    (tmp_path / "job.json").write_text("{not json")
    with pytest.raises(ProtocolError) as err:
        JobSpec.read(tmp_path / "job.json")
    assert str(err.value) == f"The job file {tmp_path / 'job.json'} is not valid JSON (line 1, column 2)."


def test_events_round_trip_and_garbage_is_named():
    line = encode_event("progress", stage="fit", done=3, total=10, eta_s=1.5)
    assert decode_event(line) == {"type": "progress", "stage": "fit", "done": 3, "total": 10, "eta_s": 1.5}
    with pytest.raises(ProtocolError, match="not a protocol event"):
        decode_event("Traceback (most recent call last):")
    with pytest.raises(ProtocolError, match="unknown event"):
        decode_event('{"type": "party"}')
    with pytest.raises(ValueError):
        encode_event("party")
