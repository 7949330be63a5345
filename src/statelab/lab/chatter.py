"""A chat user as the lab plays one: a WebSocket through the load balancer that
reconnects when its replica goes away, resumes from the last sequence number it
saw, and re-sends what was never acknowledged (same ``client_msg_id``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from statelab.lab.shopper import Shopper


@dataclass
class Chatter:
    """Records every message frame it receives and every ack it gets."""

    shopper: Shopper
    ws_url: str
    room: str = ""
    ws: ClientConnection | None = None
    replica: str = ""
    received: list[tuple[str, str, int]] = field(default_factory=list)  # sender, id, seq
    acked: dict[str, int] = field(default_factory=dict)  # client_msg_id -> seq
    pending: dict[str, str] = field(default_factory=dict)  # client_msg_id -> text
    reconnects: int = 0
    relogins: int = 0
    reconnect_seconds: list[float] = field(default_factory=list)
    typists: set[str] = field(default_factory=set)  # who this user saw typing in the room
    errors: list[dict[str, Any]] = field(default_factory=list)  # error frames received
    _answered: asyncio.Event = field(default_factory=asyncio.Event)  # unread or error came
    _joined: bool = False
    _reader: asyncio.Task[None] | None = None
    _stop: bool = False

    @property
    def last_seq(self) -> int:
        return max((seq for _, _, seq in self.received), default=0)

    def _headers(self) -> dict[str, str]:
        cookies = "; ".join(f"{k}={v}" for k, v in self.shopper.client.cookies.items())
        headers = {k: v for k, v in self.shopper.auth.items() if k == "Authorization"}
        if cookies:
            headers["Cookie"] = cookies
        return headers

    async def connect(self) -> None:
        self.ws = await connect(self.ws_url, additional_headers=self._headers(), open_timeout=10)
        response = self.ws.response
        self.replica = response.headers.get("X-Served-By", "") if response else ""
        self._reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                frame: dict[str, Any] = json.loads(raw)
                if frame.get("type") == "message" and frame.get("room") == self.room:
                    self.received.append(
                        (str(frame["sender"]), str(frame["client_msg_id"]), int(frame["seq"]))
                    )
                elif frame.get("type") == "unread" and frame.get("room") == self.room:
                    self._joined = True  # the answer to a join: messages from here are owed
                    self._answered.set()
                elif frame.get("type") == "error":
                    self.errors.append(frame)
                    self._answered.set()
                elif frame.get("type") == "typing" and frame.get("room") == self.room:
                    self.typists.add(str(frame["user"]))
                elif frame.get("type") == "ack":
                    self.acked[str(frame["client_msg_id"])] = int(frame["seq"])
                    self.pending.pop(str(frame["client_msg_id"]), None)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send, reconnecting (and resuming) first if the socket is gone."""
        for _ in range(20):
            if self.ws is not None and self._reader is not None and not self._reader.done():
                try:
                    await self.ws.send(json.dumps(frame))
                    return
                except ConnectionClosed:
                    pass
            await self.reconnect()
        raise ConnectionError(f"{self.shopper.name} could not reach the chat")

    async def join(self, within: float = 10.0) -> bool:
        """Join the room and wait for the server's answer: True once it confirms (only
        messages stored after that point are owed to this user live), False if it
        refused (a room kept in another replica's memory is unknown here)."""
        self._joined = False
        self._answered.clear()
        await self.send({"type": "join", "room": self.room})
        await asyncio.wait_for(self._answered.wait(), within)
        return self._joined

    async def say(self, client_msg_id: str, text: str) -> None:
        self.pending[client_msg_id] = text
        await self.send({"type": "send", "room": self.room, "client_msg_id": client_msg_id,
                         "text": text})  # fmt: skip

    async def reconnect(self) -> None:
        """Through the load balancer to whichever replica answers; then catch up."""
        started = time.monotonic()
        self.reconnects += 1
        while not self._stop:
            try:
                await self.connect()
                break
            except InvalidStatus as exc:
                if exc.response.status_code == 401:  # the session died with its replica
                    self.relogins += 1
                    await self.shopper.login()
                elif time.monotonic() - started > 20:
                    raise
                await asyncio.sleep(0.2)
            except (OSError, InvalidHandshake, TimeoutError):
                if time.monotonic() - started > 20:
                    raise
                await asyncio.sleep(0.2)
        assert self.ws is not None
        # resume re-enters the room and delivers everything after last_seq, once
        await self.ws.send(json.dumps({"type": "resume", "rooms": {self.room: self.last_seq}}))
        for msg_id, text in list(self.pending.items()):
            await self.ws.send(json.dumps({"type": "send", "room": self.room,
                                           "client_msg_id": msg_id, "text": text}))  # fmt: skip
        self.reconnect_seconds.append(time.monotonic() - started)

    async def flush(self, within: float) -> None:
        """Wait until every message sent was acknowledged (re-sending after reconnects)."""
        started = time.monotonic()
        while self.pending and time.monotonic() - started < within:
            if self._reader is None or self._reader.done():
                await self.reconnect()
            await asyncio.sleep(0.1)

    async def settle(self, expected: set[tuple[str, str]], within: float) -> float | None:
        """Seconds until every ``(sender, client_msg_id)`` arrived (None if not all did)."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            if self._reader is None or self._reader.done():
                await self.reconnect()
            if expected <= {(s, i) for s, i, _ in self.received}:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        return None

    async def close(self) -> None:
        self._stop = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
