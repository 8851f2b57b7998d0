"""A Yemot simulator: the ``responseStatus`` envelope, sessions that expire, SMS arriving."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime
from typing import Any

from aiohttp import web

from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.simulator import SimError, SimulatorBase, Unauthorized
from pbxbridge.vendors.yemot import operations as ops
from pbxbridge.vendors.yemot.operations import ISRAEL, VENDOR

SYSTEM_NUMBER = "0773137770"
PASSWORD = "sim-yemot-password"

SENDERS = ["972527654321", "972541112233", "972586667788", "972533334444"]
TEXTS = ["שלום, אני רוצה לקבוע תור", "Hello from the simulator", "מה שעות הפתיחה?", "Please call me back"]


class YemotSimulator(SimulatorBase):
    vendor = VENDOR
    base_path = "/ym/api/"

    def __init__(self, *, username: str = SYSTEM_NUMBER, password: str = PASSWORD, **kwargs: Any) -> None:
        self.username, self.password = username, password
        super().__init__(**kwargs)

    def seed_state(self) -> None:
        self.sms: list[dict[str, Any]] = []  # oldest first
        self._sms_seq = itertools.count(1)
        self.queues: dict[str, dict[str, Any]] = {
            "ivr2:/5": {
                "members": {
                    a: {"agent": a, "Status": "1", "CallsTaken": 0, "LastCall": "0", "Paused": False, "Penalty": 0}
                    for a in ("101", "102", "103")
                },
                "entries": {},
            }
        }
        for _ in range(3):
            self.add_sms()
        for _ in range(2):
            self.add_waiting_call("ivr2:/5")

    # ---- activity -------------------------------------------------------------------

    def add_sms(self, phone: str | None = None, message: str | None = None, when: datetime | None = None) -> dict:
        n = next(self._sms_seq)
        when = when or datetime.now(ISRAEL)
        row = {
            "dest": int("97277" + SYSTEM_NUMBER[3:]),  # Yemot sends these as JSON numbers
            "phone": int(phone or self.random.choice(SENDERS)),
            "message": message or f"{self.random.choice(TEXTS)} #{n}",
            "server_date": when.strftime("%H:%M:%S %Y-%m-%d"),
        }
        self.sms.append(row)
        return row

    def add_waiting_call(self, queue: str) -> str:
        call_id = hashlib.md5(f"{queue}-{self.random.random()}".encode()).hexdigest()
        entries = self.queues[queue]["entries"]
        entries[call_id] = {"phone": self.random.choice(SENDERS), "Wait": 0, "Position": len(entries) + 1, "CallId": call_id}
        return call_id

    def step(self) -> None:
        self.add_sms()
        for q in self.queues:
            for e in self.queues[q]["entries"].values():
                e["Wait"] += int(self.activity_interval)
            if self.random.random() < 0.5:
                self.add_waiting_call(q)

    def state(self) -> dict[str, Any]:
        return {"sms": self.sms, "queues": self.queues}

    # ---- envelope and auth ----------------------------------------------------------

    def reply(self, op: Operation, payload: Any) -> web.StreamResponse:
        if isinstance(payload, (bytes, web.StreamResponse)):
            return super().reply(op, payload)
        return web.json_response({"responseStatus": "OK", "yemotAPIVersion": 5, **(payload or {})})

    def error_reply(self, op: Operation | None, error: SimError) -> web.StreamResponse:
        if isinstance(error, Unauthorized):
            if error.message == "expired":
                return web.json_response(
                    {"responseStatus": "EXCEPTION", "message": "IllegalStateException(session token is invalid)"}
                )
            return web.json_response({"responseStatus": "FORBIDDEN", "message": error.message})
        return web.json_response({"responseStatus": "ERROR", "messageCode": error.code or 100, "message": error.message})

    def authenticate(self, op: Operation, request: web.Request, params: dict[str, Any]) -> None:
        if op.name == "Login":
            return
        token = params.pop("token", None)
        if token == f"{self.username}:{self.password}":
            return
        if not token:
            raise Unauthorized("token is missing")
        if not self.token_valid(token):
            raise Unauthorized("expired")

    def account_credentials(self) -> tuple[str | None, dict[str, str]]:
        return self.username, {"password": self.password}

    # ---- operations -----------------------------------------------------------------

    def Login(self, req: ops.LoginRequest) -> dict:
        if req.username != self.username or req.password.get_secret_value() != self.password:
            raise Unauthorized("wrong username or password")
        return {"token": self.issue_token()}

    def GetSmsIncomingLog(self, req: ops.SmsLogRequest) -> dict:
        rows = list(reversed(self.sms))  # latest first, like the real log
        if req.startDate:
            rows = [r for r in rows if _date_of(r) >= req.startDate]
        if req.endDate:
            rows = [r for r in rows if _date_of(r) <= req.endDate]
        return {"rows": rows[: req.limit] if req.limit else rows}

    def _queue(self, path: str) -> dict[str, Any]:
        if path not in self.queues:
            raise SimError(f"queue {path} not found", code="QUEUE_NOT_FOUND")
        return self.queues[path]

    def QueueManagement(self, req: ops.QueueKick | ops.QueuePause | ops.QueueUnpause) -> dict:
        queue = self._queue(req.queuePath)
        if isinstance(req, ops.QueueKick):
            status = {}
            for call_id in req.callIds:
                status[call_id] = "OK" if queue["entries"].pop(call_id, None) else "Call not found"
            return {"yAfastVersion": "6.6.20", "status": status}
        member = queue["members"].get(req.agent)
        if member is None:
            raise SimError(f"agent {req.agent} not in queue", code="AGENT_NOT_FOUND")
        member["Paused"] = req.action == "pause"
        return {}

    def GetQueueRealTime(self, req: ops.QueueRealTimeRequest) -> dict:
        queue = self._queue(req.queuePath)
        return {
            "queueData": {"name": req.queuePath, "waiting": len(queue["entries"])},
            "members": list(queue["members"].values()),
            "entries": list(queue["entries"].values()),
        }


def _date_of(row: dict) -> str:
    return row["server_date"].split(" ")[1]
