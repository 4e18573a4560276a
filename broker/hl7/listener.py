"""The MLLP listener's message handler: hands each message to the receive use case
(:class:`broker.application.Reception`: store, then answer, AA only after the commit,
HL7 v2.5.1 2.9.2) and returns its ACK to :class:`broker.hl7.mllp.MLLPServer`."""

from __future__ import annotations

from broker.application import Reception


class HL7Receiver:
    """Handler for :class:`broker.hl7.mllp.MLLPServer`: one call per inbound message."""

    def __init__(self, reception: Reception) -> None:
        self.reception = reception

    async def __call__(self, raw: bytes, peer: str) -> bytes | None:
        return await self.reception.receive(raw, peer)

    def close(self) -> None:
        self.reception.close()
