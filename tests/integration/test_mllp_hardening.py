"""MLLP abuse: slowloris, a frame over the cap, garbage, 200 simultaneous
connections and the per-IP cap. Throughout, a well-behaved client still gets its AA."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from broker.hl7.client import MLLPClient
from broker.models import InboundMessage
from tests.conftest import sample
from tests.integration.hl7util import Ack, set_field


def well_behaved(app: Any, n: int) -> float:
    """Send one fresh ADT and return how long its AA took."""
    message = set_field(sample("01"), "MSH", 10, f"GOOD{n}")
    began = time.monotonic()
    with MLLPClient("127.0.0.1", app.mllp_port, timeout=10) as client:
        ack = Ack.parse(client.send(message))
    assert ack.code == "AA"
    return time.monotonic() - began


def stored(app: Any) -> int:
    with app.runtime.session_factory() as session:
        return session.scalar(select(func.count(InboundMessage.id))) or 0


@contextmanager
def raw(app: Any) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", app.mllp_port), timeout=10) as sock:
        yield sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slowloris_is_cut_at_the_frame_deadline(make_broker: Any) -> None:
    app = make_broker(mllp_frame_timeout=2.0)
    with raw(app) as slow:
        message = b"\x0b" + sample("05")
        cut, good = False, 0
        began = time.monotonic()
        for n, byte in enumerate(message[:40]):
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if n % 3 == 0:
                assert well_behaved(app, n) < 2.0
                good += 1
            time.sleep(0.3)
        assert cut or closed_by_server(slow, 3.0)
        assert time.monotonic() - began < 8  # cut near the 2 s deadline, not served for 12 s
    assert stored(app) == good  # only the well-behaved messages


def test_frame_over_the_cap_closes_without_ack(make_broker: Any) -> None:
    app = make_broker(mllp_max_frame_bytes=4096)
    with raw(app) as big:
        big.sendall(b"\x0b" + sample("05") + b"\r" + b"NTE|1||" + b"x" * 8000)
        assert closed_by_server(big, 5.0)
    assert stored(app) == 0
    assert well_behaved(app, 1) < 2.0


def test_garbage_between_frames_is_skipped(make_broker: Any) -> None:
    app = make_broker()
    with raw(app) as sock:
        sock.sendall(b"\x00\xffGET / HTTP/1.1\r\n\r\n" + b"\x0b" + sample("05") + b"\x1c\r"
                     + b"junk\x1c\x1c\r" + b"\x0b" + sample("01") + b"\x1c\r")
        sock.settimeout(10)
        data = b""
        while data.count(b"\x1c\r") < 2:
            chunk = sock.recv(65536)
            assert chunk, "connection closed early"
            data += chunk
    assert b"MSA|AA|ORM0005" in data and b"MSA|AA|ADT0001" in data


def test_200_simultaneous_connections_and_a_good_client(make_broker: Any) -> None:
    app = make_broker(mllp_max_connections_per_ip=0)
    with ExitStack() as stack:
        idle = [stack.enter_context(raw(app)) for _ in range(200)]
        for sock in idle[::20]:
            sock.sendall(b"\x0b" + b"MSH|^~\\&|PARTIAL")  # half-sent frames, held open
        times = [well_behaved(app, n) for n in range(5)]
        assert max(times) < 2.0, times
        assert len(app.mllp.active) >= 200


def test_per_ip_connection_cap(make_broker: Any) -> None:
    app = make_broker(mllp_max_connections_per_ip=5)
    with ExitStack() as stack:
        held = [stack.enter_context(raw(app)) for _ in range(5)]
        time.sleep(0.2)
        with raw(app) as extra:
            assert closed_by_server(extra, 5.0)  # the sixth is closed before it is read
        assert len(held) == 5
    # Once they are gone, the same address is served again.
    deadline = time.monotonic() + 5
    while len(app.mllp.active) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert well_behaved(app, 1) < 2.0


@pytest.mark.parametrize("size", [120_000, 900_000])
def test_repetition_bomb_does_not_stall_a_good_sender(make_broker: Any, size: int) -> None:
    """A message with ``size`` bytes of ``~`` in PID-3 (under the 1 MiB frame cap) is
    read in linear time and refused AE 102 naming PID-3; meanwhile a well-behaved
    sender on another connection keeps getting each AA within a second."""
    app = make_broker()
    bomb = set_field(sample("05"), "PID", 3, "~" * size)
    answers: list[Ack] = []

    def attack() -> None:
        with MLLPClient("127.0.0.1", app.mllp_port, timeout=60) as client:
            for n in range(3):
                answers.append(Ack.parse(client.send(set_field(bomb, "MSH", 10, f"BOMB{n}"))))

    attacker = threading.Thread(target=attack)
    attacker.start()
    waits = []
    n = 0
    while attacker.is_alive() or n < 5:
        waits.append(well_behaved(app, n))
        n += 1
    attacker.join()
    assert max(waits) < 1.0, waits
    assert [(a.code, a.err.split("^102")[0]) for a in answers] == [("AE", "ERR|PID^1^3")] * 3
