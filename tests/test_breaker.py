"""The HostBreaker state machine on its own, driven by a hand-moved clock."""

from __future__ import annotations

from dataclasses import dataclass

from rangefs.remote.breaker import Admission, HostBreaker

HOST = "http://h:80"


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def test_cool_down_doubles_up_to_its_maximum_and_closes_on_an_answer() -> None:
    clock = Clock()
    breaker = HostBreaker(clock=clock)
    assert breaker.admit(HOST) is Admission.GO
    breaker.failed(HOST, "ConnectError: refused")
    cooldowns = []
    for _ in range(7):
        refused_until = clock.now
        while breaker.admit(HOST) is Admission.REFUSED:
            clock.now += 0.5
        cooldowns.append(clock.now - refused_until)
        breaker.failed(HOST, "ConnectError: refused")  # the trial fails
    assert cooldowns == [2, 4, 8, 16, 32, 60, 60]
    clock.now += 60
    assert breaker.admit(HOST) is Admission.TRIAL
    breaker.reached(HOST)
    assert breaker.admit(HOST) is Admission.GO
    assert breaker.statistics().hosts_down == 0
    assert breaker.statistics().trips == 1


def test_one_trial_at_a_time_and_an_abandoned_trial_frees_the_next() -> None:
    clock = Clock()
    breaker = HostBreaker(clock=clock)
    breaker.failed(HOST, "ConnectError: refused")
    clock.now += 2
    assert breaker.admit(HOST) is Admission.TRIAL
    assert breaker.admit(HOST) is Admission.REFUSED
    assert "a trial request is under way" in breaker.refusal(HOST)
    breaker.abandoned(HOST, Admission.TRIAL)  # cancelled: says nothing about the host
    assert breaker.admit(HOST) is Admission.TRIAL


def test_failures_of_requests_started_before_the_trip_change_nothing() -> None:
    clock = Clock()
    breaker = HostBreaker(clock=clock)
    breaker.failed(HOST, "ConnectTimeout: first")
    clock.now += 1
    breaker.failed(HOST, "ConnectTimeout: second, from a request already connecting")
    assert breaker.refusal(HOST) == ("host http://h:80 down for 1.0 s (ConnectTimeout: first); retrying it after 1.0 s")
    clock.now += 1
    assert breaker.admit(HOST) is Admission.TRIAL
    assert breaker.statistics().trips == 1
    assert breaker.admit("http://other:80") is Admission.GO
