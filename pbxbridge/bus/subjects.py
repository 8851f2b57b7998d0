"""Subject names. Phone numbers, message texts and secrets never go into a subject."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def _check(*tokens: str) -> None:
    for t in tokens:
        for part in t.split("."):
            if not _TOKEN.match(part):
                raise ValueError(f"invalid subject token {t!r}")


@dataclass(frozen=True)
class Subjects:
    prefix: str = "pbx"

    def event(self, vendor: str, account: str, event: str) -> str:
        _check(vendor, account, event)
        return f"{self.prefix}.events.{vendor}.{account}.{event}"

    def command(self, vendor: str, account: str, command: str) -> str:
        _check(vendor, account, command)
        return f"{self.prefix}.commands.{vendor}.{account}.{command}"

    def result(self, vendor: str, account: str, command: str) -> str:
        _check(vendor, account, command)
        return f"{self.prefix}.results.{vendor}.{account}.{command}"

    def dead_letter(self, kind: str, vendor: str, account: str, what: str) -> str:
        """``kind``: commands | events | recordings."""
        _check(kind, vendor, account, what)
        return f"{self.prefix}.dlq.{kind}.{vendor}.{account}.{what}"

    def job(self, worker: str, vendor: str, account: str) -> str:
        """Work handed from the commander to a specialised worker (``recordings``)."""
        _check(worker, vendor, account)
        return f"{self.prefix}.jobs.{worker}.{vendor}.{account}"

    # wildcards, for streams and consumers
    @property
    def all_events(self) -> str:
        return f"{self.prefix}.events.>"

    @property
    def all_commands(self) -> str:
        return f"{self.prefix}.commands.>"

    @property
    def all_results(self) -> str:
        return f"{self.prefix}.results.>"

    @property
    def all_jobs(self) -> str:
        return f"{self.prefix}.jobs.>"

    @property
    def all_dead_letters(self) -> str:
        return f"{self.prefix}.dlq.>"

    def parse_command(self, subject: str) -> tuple[str, str, str]:
        """``pbx.commands.<vendor>.<account>.<command...>`` -> (vendor, account, command)."""
        head = f"{self.prefix}.commands."
        if not subject.startswith(head):
            raise ValueError(f"not a command subject: {subject}")
        parts = subject[len(head):].split(".", 2)
        if len(parts) != 3:
            raise ValueError(f"command subject needs <vendor>.<account>.<command>: {subject}")
        return parts[0], parts[1], parts[2]
