"""A SWAN v2 simulator: users and their status, queues, calls whose recordings are
``processing`` at first and real MP3 later, agendas, terminals, company numbers."""

from __future__ import annotations

import itertools
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.sim_audio import synth
from pbxbridge.vendors.simulator import SimError, SimulatorBase, Unauthorized
from pbxbridge.vendors.swan import operations as ops
from pbxbridge.vendors.swan.operations import DEFAULT_ZONE, VENDOR

API_KEY = "sim-swan-api-key"
COMPANY = "acme"
NUMBERS = ["34600111222", "34600333444", "34911555666"]


class SwanSimulator(SimulatorBase):
    vendor = VENDOR
    base_path = "/"
    processing_seconds = 2.0  # a recording stays "processing" this long after its call ends

    def __init__(self, *, api_key: str = API_KEY, **kwargs: Any) -> None:
        self.api_key = api_key
        super().__init__(**kwargs)

    def seed_state(self) -> None:
        self._seq = itertools.count(1)
        self.users = {
            ext: {"extension": ext, "id": str(i), "name": name, "status": "available", "description": "Disponible",
                  "mobile": f"3460000{ext}", "department": dept, "mac": f"00:15:65:aa:bb:{i:02d}", "registered": True}
            for i, (ext, name, dept) in enumerate(
                [("200", "Ana", "ventas"), ("201", "Luis", "ventas"), ("202", "Marta", "soporte")], start=1)
        }
        self.queues = {q: {"members": ["200", "201"], "waiting": 1, "completed": 12, "abandoned": 2, "ring": [8, 15, 25]}
                       for q in ("q100", "q101")}
        self.calls: list[dict[str, Any]] = []  # newest last
        self.current: dict[str, list[dict[str, Any]]] = {"201": []}
        self.recordings: dict[str, dict[str, Any]] = {}  # call id -> {ready_at, seconds, parties}
        self.agendas: dict[str, dict[str, str]] = {"clientes": {"34600111222": "Cliente 1"}}
        self.numbers = [
            {"id": "1", "name": "primari - 937060370", "alias": "ONFARMA", "value": "937060370", "in_use": True},
            {"id": "2", "name": "secundari - 937060371", "alias": "RESERVA", "value": "937060371", "in_use": False},
        ]
        self.add_call("200", call_id="1700000001.1", ready=True)
        self.add_call("201", ready=False)
        self.current["201"].append(self._call_record("1700000009.1", "34600333444", "incoming", 12))

    # ---- activity ---------------------------------------------------------------------

    def _call_record(self, call_id: str, number: str, direction: str, duration: int) -> dict[str, Any]:
        return {"uniqueid": call_id, "calldate": datetime.now(DEFAULT_ZONE).strftime("%Y-%m-%d %H:%M:%S"),
                "duration": duration, "number": number, "direction": direction}

    def add_call(self, extension: str, *, call_id: str | None = None, seconds: float = 3.0, ready: bool = False) -> str:
        """A finished call of ``extension`` with a recording, ``processing`` until it is ready."""
        call_id = call_id or f"{1700000100 + next(self._seq)}.1"
        record = self._call_record(call_id, self.random.choice(NUMBERS), self.random.choice(["incoming", "outgoing"]), int(seconds))
        self.calls.append({**record, "extension": extension})
        ready_at = 0.0 if ready else time.monotonic() + self.processing_seconds
        self.recordings[call_id] = {"ready_at": ready_at, "seconds": seconds, "parties": {extension}}
        return call_id

    def finish_processing(self) -> None:
        for rec in self.recordings.values():
            rec["ready_at"] = 0.0

    def step(self) -> None:
        ext = self.random.choice(list(self.users))
        self.add_call(ext, seconds=float(self.random.randint(2, 5)))
        user = self.users[self.random.choice(list(self.users))]
        user["status"] = self.random.choice(["available", "busy", "ringing", "pause"])
        for q in self.queues.values():
            q["waiting"] = self.random.randint(0, 3)

    def state(self) -> dict[str, Any]:
        return {"users": self.users, "calls": self.calls[-20:], "agendas": self.agendas, "queues": self.queues}

    # ---- envelope and auth ------------------------------------------------------------

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/recordings/{call_id}.mp3", self._recording_file)
        return app

    async def _recording_file(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-API-Key") != self.api_key:
            return web.json_response({"error": True, "error-msg": "unauthorized", "result": None}, status=401)
        rec = self.recordings.get(request.match_info["call_id"])
        if rec is None or rec["ready_at"] > time.monotonic():
            return web.Response(status=404, text="no such recording")
        return web.Response(body=synth(rec["seconds"], "mp3"), content_type="audio/mpeg")

    def reply(self, op: Operation, payload: Any) -> web.StreamResponse:
        if isinstance(payload, web.StreamResponse):
            return payload  # a handler answering in its own shape
        return super().reply(op, {"error": False, "error-msg": None, "result": payload})

    def error_reply(self, op: Operation | None, error: SimError) -> web.StreamResponse:
        status = 401 if isinstance(error, Unauthorized) else 200  # SWAN reports errors in the envelope
        return web.json_response({"error": True, "error-msg": error.message, "result": None}, status=status)

    def authenticate(self, op: Operation, request: web.Request, params: dict[str, Any]) -> None:
        if request.headers.get("X-API-Key") != self.api_key:
            raise Unauthorized("invalid API key")

    def account_credentials(self) -> tuple[str | None, dict[str, str]]:
        return None, {"api_key": self.api_key}

    # ---- helpers ----------------------------------------------------------------------

    def _user(self, extension: str) -> dict[str, Any]:
        if extension not in self.users:
            raise SimError(f"extension {extension} not found")
        return self.users[extension]

    def _company(self, company: str) -> None:
        if company != COMPANY:
            raise SimError(f"company {company} not found")

    @staticmethod
    def _public(user: dict[str, Any], *, mobile: bool = False) -> dict[str, Any]:
        keys = ["extension", "id", "name", "status", "description"] + (["mobile"] if mobile else [])
        return {k: user[k] for k in keys}

    def _queue_stats(self, names: list[str]) -> dict[str, Any]:
        qs = [self.queues[n] for n in names if n in self.queues]
        completed = sum(q["completed"] for q in qs)
        abandoned = sum(q["abandoned"] for q in qs)
        rings = [r for q in qs for r in q["ring"]] or [0]
        avg, top = sum(rings) / len(rings), max(rings)
        ok = sum(1 for r in rings if r < 20)
        return {
            "members": sorted({m for q in qs for m in q["members"]}),
            "alarm": abandoned > completed / 4,
            "status": {
                "abandoned": abandoned, "abandonedRatio": 100 - (abandoned * 100 / max(1, completed + abandoned)),
                "avgRingTime": avg, "avgRingTimeRatio": avg * 100 / max(1, top), "completed": completed,
                "currentCalls": sum(q["waiting"] for q in qs), "maxRingTime": top, "ringTimeOK": ok,
                "serviceRatio": ok * 100 / max(1, completed),
            },
        }

    # ---- operations -------------------------------------------------------------------

    def getUserStatus(self, req: ops.Extension) -> dict:
        return self._public(self._user(req.extension))

    def setUserStatus(self, req: ops.SetUserStatus) -> dict:
        user = self._user(req.extension)
        user["status"] = req.status
        user["description"] = req.reason or {"available": "Disponible", "busy": "Ocupado", "pause": "Pausa"}[req.status]
        return self._public(user)

    def listBlfUsers(self, req: ops.BlfQuery) -> list:
        self._company(req.company)
        users = [u for u in self.users.values() if not req.departments or u["department"] in req.departments]
        return [self._public(u, mobile=bool(req.withMobile)) for u in users]

    def getQueuesStatus(self, req: ops.QueuesQuery) -> dict:
        return {"queues": {group: self._queue_stats(names) for group, names in req.queues.items()}}

    def getUsername(self, req: ops.Extension) -> dict:
        user = self.users.get(req.extension)
        return {"username": user["name"] if user else None}

    def getWebPhoneUsername(self, req: ops.Extension) -> dict:
        user = self._user(req.extension)
        return {"username": user["mac"], "is_registered": user["registered"]}

    def unregisterUser(self, req: ops.Extension) -> dict:
        self._user(req.extension)["registered"] = False
        return {"success": True}

    def getUserResume(self, req: ops.UserResumeQuery) -> dict:
        self._company(req.company)
        self._user(req.extension)
        mine = [c for c in self.calls if c["extension"] == req.extension]
        seconds = sum(c["duration"] for c in mine)
        speech = f"{seconds // 60:02d} minutos {seconds % 60:02d} segundos"
        result: dict[str, Any] = {"waiting-calls": {g: sum(self.queues[q]["waiting"] for q in qs if q in self.queues)
                                                    for g, qs in (req.queues or {}).items()}}
        if req.department:
            team = [c for c in self.calls if self.users[c["extension"]]["department"] == req.department]
            result["queue"] = {"completed": len(team), "abandoned": 0,
                               "totalSpeechTime": f"{sum(c['duration'] for c in team) // 60:02d} minutos 00 segundos"}
            share = 100 * len(mine) / max(1, len(team))
            result["user"] = {"completed": len(mine), "totalSpeechTime": speech,
                              "lastCall": mine[-1]["number"] if mine else None,
                              "stats_complete": {"percentage": share, "state": 3}, "stats_time": {"percentage": share, "state": 3}}
        return result

    def listLastCalls(self, req: ops.LastCallsQuery) -> list:
        self._user(req.extension)
        return [{k: c[k] for k in ("uniqueid", "calldate", "duration", "number", "direction")}
                for c in reversed(self.calls) if c["extension"] == req.extension]

    def listCurrentCalls(self, req: ops.Extension) -> list:
        self._user(req.extension)
        return list(reversed(self.current.get(req.extension, [])))

    def getRecording(self, req: ops.RecordingQuery) -> dict:
        self._user(req.extension)
        rec = self.recordings.get(req.callID)
        if rec is None:
            raise SimError(f"call {req.callID} not found")
        if rec["ready_at"] > time.monotonic():
            return {"processing": True}
        url = f"{self.url}recordings/{req.callID}.mp3"
        return {"processing": False, "path": url} if req.extension in rec["parties"] else {"processing": False, "link": url}

    def placeCall(self, req: ops.PlaceCall) -> dict:
        self._company(req.company)
        self._user(req.private_source)
        self.current.setdefault(req.private_source, []).append(
            self._call_record(f"{1700000500 + next(self._seq)}.1", req.destination, "outgoing", 0))
        return {"success": True}

    def deleteAgendaPhones(self, req: ops.DeleteAgendaPhones) -> dict:
        agenda = self.agendas.get(req.name)
        if agenda is None:
            raise SimError(f"agenda {req.name} not found")
        for number in req.phones if req.phones is not None else list(agenda):
            agenda.pop(number, None)
        return {"success": True}

    def updateAgenda(self, req: ops.UpdateAgenda) -> dict:
        agenda = self.agendas.setdefault(req.name, {})
        for phone in req.phones:
            agenda[phone.number] = phone.name
        return {"success": True}

    def _by_mac(self, mac: str) -> dict[str, Any]:
        for user in self.users.values():
            if user["mac"].lower() == mac.lower():
                return user
        raise SimError(f"terminal {mac} not found")

    def registerTerminal(self, req: ops.Mac) -> dict:
        self._by_mac(req.mac)["registered"] = True
        return {"success": True}

    def unregisterTerminal(self, req: ops.Mac) -> dict:
        self._by_mac(req.mac)["registered"] = False
        return {"success": True}

    def listCompanyNumbers(self, req: ops.CompanyNumbersQuery) -> list:
        self._company(req.company)
        return [{k: n[k] for k in ("id", "name", "alias", "value")} for n in self.numbers if not req.in_use or n["in_use"]]
