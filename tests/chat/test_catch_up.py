"""A live frame lost on its way (a publish into a Redis that is failing over) still
reaches the sockets that follow its room: each replica compares their cursors with the
rooms' newest messages every ``chat_catch_up_seconds`` and pulls what is missing."""

from __future__ import annotations

from statelab.db.engine import make_engine, sessionmaker
from statelab.state.chat import ChatLimits, SqlRooms
from tests.chat.conftest import Cluster
from tests.chat.support import joined, login, new_room, unique, wait_until


async def test_a_message_never_published_reaches_the_room(cluster: Cluster) -> None:
    (r1,) = cluster.start("r1", STATELAB_CHAT_CATCH_UP_SECONDS="0.3")
    alice = await login(r1, unique("alice"))
    room = await new_room(r1, alice)
    watcher = await joined(r1, alice, room)
    # Another writer of the same database that routes nothing: what a replica whose
    # publish was lost leaves behind. No later message will reveal the gap.
    engine = make_engine(cluster.database_url)
    silent = SqlRooms(sessionmaker(engine), ChatLimits(5, 30.0, 6.0))
    try:
        stored = await silent.post(room, alice.user_id, alice.username, "lost-1", "hello?")

        def arrived() -> bool:
            return any(f.get("client_msg_id") == "lost-1" for f in watcher.frames)

        await wait_until(arrived, 5)
        got = [f for f in watcher.frames if f.get("client_msg_id") == "lost-1"]
        assert len(got) == 1 and got[0]["seq"] == stored.message.seq
    finally:
        await silent.close_log()
        await engine.dispose()
        await watcher.close()
