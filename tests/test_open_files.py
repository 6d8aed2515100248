"""serve raises its open-file limit to the hard limit, and says so when that is too low."""

from __future__ import annotations

import resource

import pytest

from sse_bridge._cli import server


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int]]:
    state = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda which: state["now"])

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        state["now"] = value

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    return state


def test_the_soft_limit_is_raised_to_the_hard_one(
    limits: dict[str, tuple[int, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert server.raise_open_files(1000) == (4096, 2064)
    assert limits["now"] == (4096, 4096)
    assert capsys.readouterr().err == ""


def test_a_hard_limit_below_what_max_streams_needs_is_told(
    limits: dict[str, tuple[int, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert server.raise_open_files(10_000) == (4096, 20064)
    err = capsys.readouterr().err
    assert "the open-file limit is 4096, below the 20064 that --max-streams 10000 needs" in err
    assert "streams past about 2016 will fail" in err


def test_an_unlimited_hard_limit_is_left_alone(
    limits: dict[str, tuple[int, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    limits["now"] = (1024, resource.RLIM_INFINITY)
    assert server.raise_open_files(100) == (1024, 264)
    assert limits["now"] == (1024, resource.RLIM_INFINITY)
    assert capsys.readouterr().err == ""


def test_the_real_limit_is_raised_in_this_process() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit, _ = server.raise_open_files(1)
    assert limit == (hard if hard != resource.RLIM_INFINITY else soft)
