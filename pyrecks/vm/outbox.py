"""The outbox: a step's effects on keys of other slots, exactly once, on Redis Cluster.

A Lua script runs in one slot, so on a cluster the step's COMMIT (in the chain's slot) cannot
apply effects on keys elsewhere.  It records them instead — the chain record's ``owed`` and
``owed_step`` fields, and the chain's id in its shard's outbox set — in the same atomic
commit as the checkpoint.  Then, for each slot the effects touch, the APPLY script applies
that slot's effects together and leaves a marker (``pyrecks:applied:{<tag>}<chain>:<step>``,
in the same slot); a marker present means "already applied", so a second delivery — by the
same VM after a lost reply, or by another VM recovering the entry — changes nothing.  Once
every slot is done, DELIVERED clears the outbox entry.

(A chain that goes on to another step leaves the entry for its next commit to clear — one
round trip less per step; until then another VM may find it and deliver it again, which
changes nothing.)

Who delivers: the committing VM, right after the commit and before the chain's next step
(so a step's effects land before the next step's, and an ``@key`` read by the next step sees
them).  A VM that died between commit and delivery leaves the entry behind: the VM that
claims the chain next delivers it before running anything (:meth:`Outbox.flush`), and every
VM's heartbeat delivers entries of chains nobody runs (:meth:`Outbox.recover`), e.g. of a
chain that ended with that step.

Before the commit, the same checks COMMIT makes on one Redis run in each target slot
("check" mode), so a doomed effect still fails the step rather than arriving half-applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.crc import key_slot

from pyrecks.keys import Keyspace, hash_tag
from pyrecks.vm.chainrun import RedisAccess, text
from pyrecks.vm.chainstore import ChainStore, Invocation, Reply, unpack_effects
from pyrecks.vm.effects import EffectRejected


def by_slot(effects: list[list[bytes]]) -> list[list[list[bytes]]]:
    """The effects grouped by their key's slot, groups and effects in first-seen order."""
    groups: dict[int, list[list[bytes]]] = {}
    for effect in effects:
        key = effect[1] if isinstance(effect[1], bytes) else str(effect[1]).encode()
        groups.setdefault(key_slot(key), []).append(effect)
    return list(groups.values())


def _key(effect: list[bytes]) -> str:
    raw = effect[1]
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)


class Outbox:
    """Delivers owed effects (see the module docstring).  Only used on a cluster."""

    def __init__(self, store: ChainStore, access: RedisAccess) -> None:
        self.store = store
        self.access = access
        #: Deliveries an APPLY refused after the commit (the key changed type meanwhile).
        self.refused: list[str] = []

    @property
    def keyspace(self) -> Keyspace:
        return self.store.keyspace

    def marker(self, chain_id: str, step: str, group: list[list[bytes]]) -> str:
        return f"{self.keyspace.applied(_key(group[0]))}{chain_id}:{step}"

    def check(self, effects: list[list[bytes]]) -> None:
        """Raise EffectRejected if an effect may not apply (the checks COMMIT makes)."""
        for effect in effects:
            key = _key(effect)
            if hash_tag(key) is None and ("{" in key or "}" in key):
                raise EffectRejected(
                    f"{text(effect[0])} {key}: on Redis Cluster an effect key with "
                    "braces must hold a hash tag ({tag}), so that its delivery marker "
                    "shares its slot"
                )
        for group in by_slot(effects):
            invocation = self.store.apply(self.marker("check", "0", group), group, "check")
            reply = self._run(invocation)
            if reply.status == "rejected":
                raise EffectRejected(f"effect refused: {reply.text(0)}")

    def deliver(
        self, chain_id: str, step: str, effects: list[list[bytes]], *, clear: bool = True
    ) -> None:
        """Apply step ``step``'s owed effects slot by slot (idempotent), then clear them
        (``clear``; else the chain's next commit does: see Commit.delivered)."""
        for group in by_slot(effects):
            invocation = self.store.apply(self.marker(chain_id, step, group), group, "apply")
            reply = self._run(invocation)
            if reply.status == "rejected":
                # Checked before the commit; a key that changed type since cannot take it.
                why = (
                    f"[{chain_id}] step {step}: an effect was refused after the commit "
                    f"and not applied: {reply.text(0)}"
                )
                self.refused.append(why)
                self.access.say(why, chain=chain_id)
        if clear:
            self._run(self.store.delivered(chain_id, step))

    def _run(self, invocation: Invocation) -> Reply:
        return self.access.retrying(lambda: invocation.run(self.access.client()))

    def flush(self, chain_id: str) -> bool:
        """Deliver what the chain still owes, if anything (before it runs a step)."""
        raw: Any = self.access.retrying(
            lambda: self.access.client().hmget(
                self.keyspace.chain(chain_id), "owed", "owed_step"
            )
        )
        owed, step = raw
        if owed is None or step is None:
            return False
        self.deliver(chain_id, text(step), unpack_effects(owed))
        return True

    def recover(self, ours: Callable[[str], bool]) -> int:
        """Deliver every outbox entry of a chain that is not ``ours`` (we deliver our own
        right after each commit): a VM died between a commit and its delivery.  Returns
        how many chains it delivered for."""
        count = 0
        for shard in self.keyspace.every_shard():
            members: Any = self.access.client().smembers(shard.outbox)
            for chain_id in sorted(text(m) for m in members or ()):
                if ours(chain_id):
                    continue
                if self.flush(chain_id):
                    count += 1
                else:  # nothing owed any more: a stale member
                    done = self.store.delivered(chain_id, "")
                    done.run(self.access.client())
        return count
